"""Options: sources and their precedence, validation, and the documents that list them."""

import dataclasses
from pathlib import Path

import pytest

from echoes import config
from echoes.config import ConfigError, Settings, display_url
from echoes.embedded import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def load(*args, env=None):
    return config.load(["echoes", *args], env or {})


def test_defaults():
    assert load() == Settings()


def test_command_line_beats_environment_beats_file(tmp_path):
    conf = tmp_path / "echoes.conf"
    conf.write_text("port = 1\nkey_prefix = 'file:'\nmessage_ttl = 10\n")
    env = {"ECHOES_PORT": "2", "ECHOES_KEY_PREFIX": "env:"}
    settings = load(f"--config={conf}", "--port=3", env=env)
    assert (settings.port, settings.key_prefix, settings.message_ttl) == (3, "env:", 10)
    assert load(f"--config={conf}", env=env).port == 2
    assert load(f"--config={conf}").port == 1


def test_config_path_may_come_from_the_environment(tmp_path):
    conf = tmp_path / "echoes.conf"
    conf.write_text("redis_timeout = 0.25\n")
    assert load(env={"ECHOES_CONFIG": str(conf)}).redis_timeout == 0.25


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--port=abc"], "port"),
        (["--port=70000"], "out of range"),
        (["--message_ttl=0"], "out of range"),
        (["--max_batch=100000"], "out of range"),
        (["--key_prefix=a{b}"], "hash tags"),
        (["--log_level=loud"], "log_level"),
        (["--redis_url=http://x"], "redis_url"),
        (["--nonsense=1"], "nonsense"),
        (["stray"], "unexpected argument"),
        (["--config=/no/such/file"], "cannot read"),
    ],
)
def test_bad_values_are_refused(args, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load(*args)


def test_bad_environment_value_is_refused():
    with pytest.raises(ConfigError, match="port"):
        load(env={"ECHOES_PORT": "eighty"})


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("port = 'eighty'\n", "port"),
        ("prot = 80\n", "'prot' is not an option"),
        ("port = 8.5\n", "port"),
        ("port = = 1\n", "SyntaxError"),
    ],
)
def test_bad_config_file_is_refused(tmp_path, text, fragment):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load(f"--config={conf}")


def test_a_bad_value_stops_with_one_line_and_status_2(capsys):
    with pytest.raises(SystemExit) as exit:
        config.load_or_exit(["echoes", "--port=-1"], {})
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("echoes: error: --port=-1")


def test_display_url_hides_credentials():
    assert display_url("redis://u:pw@h:1/0") == "redis://h:1/0"
    assert display_url("rediss://:pw@h/0") == "rediss://h/0"
    assert display_url("unix:///tmp/r.sock") == "unix:///tmp/r.sock"


def test_example_config_sets_every_option_and_loads():
    conf = ROOT / "conf" / "echoes.conf"
    text = conf.read_text()
    for f in dataclasses.fields(Settings):
        assert f"\n{f.name} = " in text, f"{f.name} missing from conf/echoes.conf"
    settings = load(f"--config={conf}")
    assert settings.data_dir == "/var/lib/echoes"


def test_readme_option_table_is_current():
    assert config.markdown_table() in (ROOT / "README.md").read_text()


def test_the_embedded_redis_is_configured_as_conf_redis_conf_says(tmp_path):
    options = RedisServer(tmp_path).options
    for line in (ROOT / "conf" / "redis.conf").read_text().splitlines():
        if line.strip() and not line.startswith(("#", "user ")):
            name, value = line.split(None, 1)
            assert options[name] == value, name

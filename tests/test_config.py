"""Options: sources and their precedence, validation, and the documents that list them."""

import dataclasses
from pathlib import Path

import pytest

from echoes import config, options
from echoes.config import ConfigError, Settings
from echoes.embedded import RedisServer
from echoes.topology import display

ROOT = Path(__file__).resolve().parent.parent


def load(*args, env=None):
    return options.load(["echoes", *args], env or {})


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


def test_options_take_a_space_or_an_equals_sign_dashes_or_underscores():
    assert load("--port", "9000").port == 9000
    assert load("--max-wait=3").max_wait == 3.0
    assert load("--max_wait", "4").max_wait == 4.0


def test_choices_are_case_insensitive_wherever_they_come_from():
    assert load(env={"ECHOES_LOG_LEVEL": "DEBUG"}).log_level == "debug"
    assert load("--wake=Publish").wake == "publish"


# What an operator types, and the one line echoes answers (issue 12's stumbles).
@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["--port=abc"], {}, "--port: 'abc' (command line) is not a whole number"),
        (["--port", "70000"], {}, "--port: '70000' (command line) is out of range 0..65535"),
        (["--message_ttl=0"], {}, "--message_ttl: '0' (command line) is out of range 1.."),
        (["--max-batch=100000"], {}, "is out of range 1..5000"),
        (["--redis-timeout=soon"], {}, "--redis-timeout: 'soon' (command line) is not a number"),
        (["--log-level=loud"], {}, "--log-level: 'loud' (command line) is not one of: debug,"),
        ([], {"ECHOES_WAKE": "carrier-pigeon"}, "ECHOES_WAKE: 'carrier-pigeon' (ECHOES_WAKE)"),
        ([], {"ECHOES_PORT": "eighty"}, "ECHOES_PORT: 'eighty' (ECHOES_PORT) is not a whole"),
        (["--key-prefix=a{b}"], {}, "hash tags"),
        (["--redis-url=http://x"], {}, "--redis-url must start with"),
        (["--nonsense=1"], {}, "unrecognized arguments: --nonsense=1"),
        (["stray"], {}, "unrecognized arguments: stray"),
        (["--config=/no/such/file"], {}, "cannot read config file"),
    ],
)
def test_bad_values_are_refused_naming_option_and_source(args, env, fragment):
    with pytest.raises(ConfigError) as error:
        load(*args, env=env)
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("port = 'eighty'\n", "port: 'eighty' (bad.conf:1) is not a whole number"),
        ("# a comment\nprot = 80\n", "bad.conf:2: 'prot' is not an option"),
        ("port = 8.5\n", "port: 8.5 (bad.conf:1) is not a whole number"),
        ("port: 8000\n", "not valid TOML"),  # the YAML habit: refused, not ignored
        ("log_level = INFO\n", "not valid TOML"),
        ("cors_origins = 1\n", "is not a string"),
        ("\n\nmax-wait = 'long'\n", "max-wait: 'long' (bad.conf:3) is not a number"),
    ],
)
def test_bad_config_file_is_refused_with_file_line_and_key(tmp_path, text, fragment):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError) as error:
        load(f"--config={conf}")
    assert fragment in str(error.value).replace(str(tmp_path) + "/", "")


def test_a_credential_holds_the_redis_url_out_of_the_config_file(tmp_path):
    # systemd's LoadCredential= puts a root-only file where only the service reads it.
    (tmp_path / "redis_url").write_text("redis://echoes:secret@127.0.0.1:6379/0\n")
    conf = tmp_path / "echoes.conf"
    conf.write_text("redis_url = 'redis://127.0.0.1:6379/0'\nport = 1\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert load(f"--config={conf}", env=env).redis_url == "redis://echoes:secret@127.0.0.1:6379/0"
    assert load(env=env | {"ECHOES_REDIS_URL": "redis://other/0"}).redis_url == "redis://other/0"


def test_a_bad_value_stops_with_one_line_and_status_2(capsys):
    with pytest.raises(SystemExit) as exit:
        options.load_or_exit(["echoes", "--port=-1"], {})
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("echoes: error: --port: '-1'")


def test_display_url_hides_credentials():
    assert display("redis://u:pw@h:1/0") == "redis://h:1/0"
    assert display("rediss://:pw@h/0") == "rediss://h/0"
    assert display("unix:///tmp/r.sock") == "unix:///tmp/r.sock"


def test_example_config_sets_every_option_and_loads():
    conf = ROOT / "conf" / "echoes.conf"
    text = conf.read_text()
    for f in dataclasses.fields(Settings):
        # Secrets are credentials under systemd: shown, commented out, not set.
        line = f"\n# {f.name} = " if f.name in options.CREDENTIALS else f"\n{f.name} = "
        assert line in text, f"{f.name} missing from conf/echoes.conf"
    settings = load(f"--config={conf}")
    assert settings.data_dir == "/var/lib/echoes"


def test_the_documented_option_table_is_current():
    # The README links to it ("Configuration"); the table is made from Settings.
    assert config.markdown_table() in (ROOT / "docs" / "configuration.md").read_text()
    assert "(docs/configuration.md)" in (ROOT / "README.md").read_text()


def test_the_embedded_redis_is_configured_as_conf_redis_conf_says(tmp_path):
    options = RedisServer(tmp_path).options
    for line in (ROOT / "conf" / "redis.conf").read_text().splitlines():
        if line.strip() and not line.startswith(("#", "user ")):
            name, value = line.split(None, 1)
            assert options[name] == value, name


# --- reload (SIGHUP) of a file caught mid-write: issue 23 ----------------------------------

RUNNING = "max_inbox_records = 2\ncors_origins = 'https://app.example'\n"


def reloader(conf, env=None):
    """A Reloader of ``conf`` that has loaded it once, as echoes at start-up."""
    reload = options.Reloader(["echoes", f"--config={conf}"], env or {})
    reload.load_or_exit()
    return reload


@pytest.mark.parametrize("text", ["", "\n", "# all commented out\n", "max_inbox_records = 2\n"])
def test_a_reload_that_would_drop_options_the_file_set_is_refused(tmp_path, text):
    # Issue 23: SIGHUP while the file was momentarily empty was accepted (max_inbox_records
    # 2 -> 10000, cors_origins 'https://app.example' -> '').
    conf = tmp_path / "echoes.conf"
    conf.write_text(RUNNING)
    reload = reloader(conf)
    conf.write_text(text)
    with pytest.raises(ConfigError, match=r"no longer sets (cors_origins|max_inbox_records)"):
        reload()
    conf.write_text(RUNNING.replace("2", "3"))  # a whole file again: applied
    assert reload().max_inbox_records == 3


def test_an_option_dropped_from_the_file_but_set_elsewhere_is_no_loss(tmp_path):
    conf = tmp_path / "echoes.conf"
    conf.write_text(RUNNING)
    reload = reloader(conf, env={"ECHOES_CORS_ORIGINS": "https://env.example"})
    conf.write_text("max_inbox_records = 5\n")
    assert (reload().max_inbox_records, reload().cors_origins) == (5, "https://env.example")
    conf.write_text("max_inbox_records = 10000\n")  # a reset is written as the default value
    assert reload().max_inbox_records == Settings().max_inbox_records


def test_a_reload_of_a_file_cut_mid_line_is_refused(tmp_path):
    # Issue 23: a file cut mid-value that is still TOML was applied ('https://app.exa').
    conf = tmp_path / "echoes.conf"
    whole = "cors_origins = 'https://app.example'\nmax_inbox_records = 20000\n"
    conf.write_text(whole)
    reload = reloader(conf)
    conf.write_text(whole[: whole.index("20000") + 1])  # max_inbox_records = 2, still TOML
    with pytest.raises(ConfigError, match="ends mid-line"):
        reload()
    assert load(f"--config={conf}").max_inbox_records == 2  # at start-up it is read as is


def test_a_reload_of_a_file_changing_while_read_is_refused(tmp_path, monkeypatch):
    conf = tmp_path / "echoes.conf"
    conf.write_text(RUNNING)
    reload = reloader(conf)
    reads = []
    read_bytes = Path.read_bytes

    def writer_still_writing(path):  # a writer appends between the two reads
        data = read_bytes(path)
        if not reads:
            with open(path, "a") as f:
                f.write("max_destinations = 5\n")
        reads.append(data)
        return data

    monkeypatch.setattr(Path, "read_bytes", writer_still_writing)
    with pytest.raises(ConfigError, match=r"changed while it was read.*rename it"):
        reload()
    monkeypatch.undo()
    assert reload().max_destinations == 5  # once it holds still

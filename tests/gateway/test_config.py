"""The gateway's provider configuration: what a valid file is, and what each error says."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsession.gateway import ConfigError, SecretKey, load_config, parse_config

ENV = {"FAKE_KEY": "sk-very-secret"}

VALID = """
[gateway]
history_limit_bytes = 1000

[providers.fake]
kind = "openai"
base_url = "http://127.0.0.1:9000/v1/"
api_key_env = "FAKE_KEY"
timeout_seconds = 5
models = ["gpt-4o-mini", "meta-llama/x"]
"""


def test_a_valid_file_gives_every_field() -> None:
    config = parse_config(VALID, source="gw.toml", environ=ENV)
    provider = config.provider("fake")
    assert provider is not None
    assert provider.kind == "openai"
    assert provider.base_url == "http://127.0.0.1:9000/v1"
    assert provider.api_key.reveal() == "sk-very-secret"
    assert provider.timeout_seconds == 5.0
    assert provider.allows("meta-llama/x")
    assert not provider.allows("gpt-4o")
    assert config.history_limit_bytes == 1000
    assert config.provider("other") is None


def test_an_anthropic_provider_keeps_its_base_url_without_v1() -> None:
    text = (
        '[providers.claude]\nkind = "anthropic"\n'
        'base_url = "https://api.anthropic.com/"\napi_key_env = "FAKE_KEY"\n'
    )
    provider = parse_config(text, environ=ENV).provider("claude")
    assert provider is not None
    assert (provider.kind, provider.base_url) == ("anthropic", "https://api.anthropic.com")


def test_the_key_never_shows_in_repr_or_str() -> None:
    config = parse_config(VALID, environ=ENV)
    for text in (repr(config), str(config), repr(config.providers["fake"]), str(SecretKey("x"))):
        assert "sk-very-secret" not in text
        assert "'x'" not in text


def test_optional_fields_default() -> None:
    text = '[providers.p]\nkind = "openai"\nbase_url = "https://api.example/v1"\napi_key_env = "FAKE_KEY"\n'
    provider = parse_config(text, environ=ENV).providers["p"]
    assert provider.models is None
    assert provider.allows("anything")
    assert provider.timeout_seconds == 60.0


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(VALID, encoding="utf-8")
    assert load_config(path, environ=ENV).source == str(path)


def test_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the gateway config .*nope\.toml"):
        load_config(tmp_path / "nope.toml", environ=ENV)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[providers", r"is not valid TOML"),
        ("", r"configures no provider"),
        ("colour = 1\n[providers.p]\n", r"unknown key\(s\) colour"),
        ('[providers.p]\nkind = "openai"\n', r"\[providers\.p\] needs 'base_url'"),
        (
            '[providers.p]\nkind = "cohere"\nbase_url = "http://x"\napi_key_env = "FAKE_KEY"\n',
            r"kind must be one of 'openai', 'anthropic'.*, got 'cohere'",
        ),
        (
            '[providers.p]\nkind = "openai"\nbase_url = "ftp://x"\napi_key_env = "FAKE_KEY"\n',
            r"base_url must be an http:// or https:// URL",
        ),
        (
            '[providers.p]\nkind = "openai"\nbase_url = "http://u:pw@x"\napi_key_env = "FAKE_KEY"\n',
            r"must not hold credentials",
        ),
        (
            '[providers.p]\nkind = "openai"\nbase_url = "http://x"\napi_key_env = "UNSET_VAR"\n',
            r"environment variable UNSET_VAR, which is not set",
        ),
        (
            '[providers.p]\nkind = "anthropic"\nbase_url = "https://api.anthropic.com/v1/"\n'
            'api_key_env = "FAKE_KEY"\n',
            r"base_url of a provider of kind 'anthropic' is the API's root, as its SDK takes it "
            r"\(e.g. 'https://api.anthropic.com'\), without '/v1'",
        ),
        (
            '[providers.p]\nkind = "gemini"\nbase_url = "http://x/v1beta"\napi_key_env = "FAKE_KEY"\n',
            r"without '/v1beta': llmsession adds the version",
        ),
        (
            '[providers."a/b"]\nkind = "openai"\nbase_url = "http://x"\napi_key_env = "FAKE_KEY"\n',
            r"must not contain '/'",
        ),
        (
            '[providers.p]\nkind = "openai"\nbase_url = "http://x"\napi_key_env = "FAKE_KEY"\n'
            "timeout_seconds = 0\n",
            r"timeout_seconds must be a number of seconds above 0",
        ),
        (
            '[providers.p]\nkind = "openai"\nbase_url = "http://x"\napi_key_env = "FAKE_KEY"\n'
            "models = []\n",
            r"models must be a non-empty list",
        ),
        (
            '[providers.p]\nkind = "openai"\nbase_url = "http://x"\napi_key_env = "FAKE_KEY"\n'
            'models = [" padded"]\n',
            r"must not start or end with white space",
        ),
        (
            '[providers.p]\nkind = "openai"\nbase_url = "http://x"\napi_key_env = "FAKE_KEY"\n'
            "key = 'sk-inline'\n",
            r"unknown key\(s\) key; allowed: api_key_env",
        ),
        ("[gateway]\nhistory_limit_bytes = 0\n", r"history_limit_bytes must be a positive integer"),
    ],
)
def test_each_error_names_the_file_and_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(text, source="gw.toml", environ=ENV)
    assert "gw.toml" in str(caught.value)
    assert "sk-very-secret" not in str(caught.value)

"""The one redaction rule, the Secret type and the logging filter."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsbackup.secret import REDACTED, RedactingFilter, Secret, is_secret_key, redact


def test_secret_repr_and_value() -> None:
    s = Secret("hunter22")
    assert repr(s) == "Secret('***')" and f"{s!r}" == "Secret('***')"
    assert s == "hunter22" and s.reveal() == "hunter22" and type(s.reveal()) is str
    assert "hunter22" not in repr({"password": s}) and "hunter22" not in repr([s])


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("backup_password", True),
        ("b2_account_key", True),
        ("aws_secret_access_key", True),
        ("smb_pass", True),
        ("rclone_conf_secret", True),
        ("rclone_conf_b64_secret", True),
        ("token", True),
        ("Session_Token", True),
        ("aws_access_key_id", False),
        ("b2_account_id", False),
        ("keys", False),
        ("passphrase_file", False),
        ("name", False),
    ],
)
def test_rule(name: str, secret: bool) -> None:
    assert is_secret_key(name) is secret


def test_declared_parameters_count_too() -> None:
    assert redact({"webdav_login": "x"}, declared={"webdav_login"}) == {"webdav_login": REDACTED}


def test_nested_redaction() -> None:
    payload = {
        "provider": "smb",
        "password": "",
        "parameters": {"smb_pass": "p", "smb_user": "u"},
        "list": [{"token": "t"}, Secret("s"), "plain"],
        "key": None,
    }
    assert redact(payload) == {
        "provider": "smb",
        "password": "",
        "parameters": {"smb_pass": REDACTED, "smb_user": "u"},
        "list": [{"token": REDACTED}, REDACTED, "plain"],
        "key": None,
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3)
    ),
    max_leaves=12,
)


@given(json_values)
def test_redaction_never_keeps_a_secret_keyed_value(value: object) -> None:
    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if is_secret_key(k) and v not in (None, ""):
                    assert v == REDACTED
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(redact(value))


def test_logging_filter(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("nsbackup.test.redaction")
    flt = RedactingFilter()
    flt.add("s3cr3t-value")
    log.addFilter(flt)
    try:
        with caplog.at_level(logging.INFO, logger="nsbackup.test.redaction"):
            log.info("connecting with %s", "s3cr3t-value")
            log.info("payload %s", {"password": "other-secret", "user": "u"})
            log.info("secret object %r", Secret("third-secret"))
    finally:
        log.removeFilter(flt)
    assert "s3cr3t-value" not in caplog.text and "other-secret" not in caplog.text
    assert "third-secret" not in caplog.text and caplog.text.count(REDACTED) >= 3

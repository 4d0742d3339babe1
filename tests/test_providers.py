"""Every built-in provider at config level: rendering, validation, alter, names, UUIDs."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from nsbackup import ini
from nsbackup.destinations import destination_uuid, display_conf, prepare, stored_destination
from nsbackup.errors import ValidationFailed
from nsbackup.model import DestinationRequest, PreparedDestination
from nsbackup.obscure import obscure, reveal
from nsbackup.plugins import PluginHost
from tests.builtin import BUILTIN_PLUGINS
from tests.rclone_check import dump

CANARY = "canary-S3cr3t-7f3a"

REQUESTS: dict[str, dict[str, Any]] = {
    "aws": {
        "provider": "aws",
        "name": "",
        "url": "s3:s3.amazonaws.com/mybucket/path",
        "parameters": {
            "aws_access_key_id": "AKIA1",
            "aws_secret_access_key": CANARY,
            "aws_default_region": "eu-west-1",
        },
    },
    "generic-s3": {
        "provider": "generic-s3",
        "name": "",
        "url": "s3:http://127.0.0.1:9000/bk/p",
        "parameters": {"aws_access_key_id": "minio", "aws_secret_access_key": CANARY},
    },
    "backblaze": {
        "provider": "backblaze",
        "name": "",
        "url": "b2:mybucket",
        "parameters": {"b2_account_id": "id", "b2_account_key": CANARY},
    },
    "azure": {
        "provider": "azure",
        "name": "",
        "url": "azure:container/sub",
        "parameters": {
            "azure_account_name": "devstoreaccount1",
            "azure_account_key": CANARY,
            "endpoint": "http://127.0.0.1:10000/devstoreaccount1",
        },
    },
    "smb": {
        "provider": "smb",
        "name": "",
        "url": "smb:backup/ns8",
        "parameters": {
            "smb_host": "nas.example.org",
            "smb_user": "u",
            "smb_pass": CANARY,
            "smb_domain": "WORKGROUP",
            "smb_port": "4450",
        },
    },
    "webdav": {
        "provider": "webdav",
        "name": "",
        "url": "webdav:https://dav.example.org/backups",
        "parameters": {"webdav_user": "u", "webdav_pass": CANARY},
    },
    "cluster": {
        "provider": "cluster",
        "name": "",
        "url": "webdav:http://10.5.4.1:4694",
        "parameters": {},
    },
    "rclone": {
        "provider": "rclone",
        "name": "",
        "url": "",
        "parameters": {
            "rclone_conf_secret": f"[mine]\ntype = s3\nprovider = Minio\n"
            f"access_key_id = AK\nsecret_access_key = {CANARY}\n"
            "endpoint = http://127.0.0.1:9000\n",
            "basepath": "bucket/sub",
        },
    },
}


def make(host: PluginHost, payload: dict[str, Any], previous: Any = None) -> PreparedDestination:
    return prepare(
        host, DestinationRequest.from_payload(payload, alter=previous is not None), previous
    )


def errors_of(host: PluginHost, payload: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationFailed) as info:
        make(host, payload)
    return [e.as_dict() for e in info.value.errors]


def test_eight_providers_are_registered(host: PluginHost) -> None:
    assert sorted(host.providers) == sorted(REQUESTS)
    for name in REQUESTS:
        assert host.owner("provider", name) in BUILTIN_PLUGINS


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_real_rclone_reads_every_provider_section(
    host: PluginHost, name: str, tmp_path: Path
) -> None:
    prepared = make(host, REQUESTS[name])
    dumped = dump(prepared.rclone_conf, tmp_path)
    assert dumped == {prepared.id: {k: str(v) for k, v in prepared.section.items()}}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_secrets_stay_out_of_public_fields_and_displays(host: PluginHost, name: str) -> None:
    prepared = make(host, REQUESTS[name])
    for text in (
        prepared.id,
        prepared.name,
        prepared.url,
        str(prepared.public()),
        display_conf(prepared),
        repr(prepared),
    ):
        assert CANARY not in text
    if name == "smb":  # stored obscured, as rclone requires
        assert reveal(prepared.section["pass"]) == CANARY
    elif name not in ("cluster",):
        assert CANARY in prepared.rclone_conf or name == "webdav"


def test_ns8_sections(host: PluginHost) -> None:
    b2 = make(host, REQUESTS["backblaze"])
    assert dict(b2.section) == {"type": "b2", "account": "id", "key": CANARY}
    assert (b2.name, b2.url, b2.basepath, b2.public_basepath) == (
        "Backblaze mybucket",
        "b2:mybucket",
        "mybucket",
        "",
    )
    aws = make(host, REQUESTS["aws"])
    assert dict(aws.section) == {
        "type": "s3",
        "provider": "AWS",
        "access_key_id": "AKIA1",
        "secret_access_key": CANARY,
        "endpoint": "s3.amazonaws.com",
        "region": "eu-west-1",
    }
    assert "env_auth" not in aws.section  # never pick up ambient credentials (ref §14.23)
    assert (aws.name, aws.basepath) == ("AWS mybucket/path", "mybucket/path")
    az = make(host, REQUESTS["azure"])
    assert dict(az.section) == {
        "type": "azureblob",
        "account": "devstoreaccount1",
        "key": CANARY,
        "endpoint": "http://127.0.0.1:10000/devstoreaccount1",
    }
    assert az.basepath == "container/sub" and az.name == f"azure {az.id[:4]}"
    smb = make(host, REQUESTS["smb"])
    assert {k: v for k, v in smb.section.items() if k != "pass"} == {
        "type": "smb",
        "host": "nas.example.org",
        "user": "u",
        "domain": "WORKGROUP",
        "port": "4450",
    }
    assert smb.basepath == "backup/ns8"
    cluster = make(host, REQUESTS["cluster"])
    assert dict(cluster.section) == {"type": "local"} and cluster.basepath == ""


def test_webdav_sections(host: PluginHost) -> None:
    dav = make(host, REQUESTS["webdav"])
    assert dav.section["url"] == "https://dav.example.org" and dav.basepath == "backups"
    assert reveal(dav.section["pass"]) == CANARY
    nextcloud = make(
        host,
        {
            **REQUESTS["webdav"],
            "url": "webdav:https://c.example.org/remote.php/dav/files/ann/bk",
            "parameters": {"webdav_user": "ann", "webdav_pass": "x", "webdav_vendor": "nextcloud"},
        },
    )
    assert nextcloud.section["url"] == "https://c.example.org/remote.php/dav/files/ann"
    assert nextcloud.section["vendor"] == "nextcloud" and nextcloud.basepath == "bk"


@pytest.mark.parametrize(
    ("host_name", "params", "expected"),
    [
        ("nyc3.digitaloceanspaces.com", {}, {"provider": "DigitalOcean"}),
        (
            "s3.de.io.cloud.ovh.net",
            {},
            {"provider": "Other", "region": "de", "location_constraint": "de"},
        ),
        (
            "s3.de.io.cloud.ovh.net",
            {"aws_default_region": "gra"},
            {"provider": "Other", "region": "gra", "location_constraint": "gra"},
        ),
        ("s3.eu-central-1.wasabisys.com", {}, {"provider": "Wasabi", "region": "eu-central-1"}),
        (
            "eu-002.s3.synologyc2.net",
            {},
            {"provider": "Synology", "region": "eu-002", "no_check_bucket": "true"},
        ),
        ("fsn1.your-objectstorage.com", {}, {"provider": "Other", "region": "fsn1"}),
        ("x1y2.idrivee2-7.com", {}, {"provider": "IDrive", "no_check_bucket": "true"}),
        ("s3.cubbit.eu", {}, {"provider": "Other", "region": "eu-west-1"}),
        ("s3.scalablestorage.it", {}, {"provider": "Other", "no_check_bucket": "true"}),
        ("minio.example.org", {}, {"provider": "Other"}),
    ],
)
def test_s3_vendor_table(
    host: PluginHost, host_name: str, params: dict[str, str], expected: dict[str, str]
) -> None:
    payload = {
        "provider": "generic-s3",
        "name": "",
        "url": f"s3:{host_name}/bucket",
        "parameters": {"aws_access_key_id": "a", "aws_secret_access_key": "b", **params},
    }
    section = make(host, payload).section
    for key, value in expected.items():
        assert section[key] == value
    assert section["endpoint"] == host_name  # a bare host means HTTPS (rclone's default)


def test_ovh_region_param_wins_even_when_empty(host: PluginHost) -> None:
    payload = {
        "provider": "generic-s3",
        "url": "s3:s3.de.io.cloud.ovh.net/b1",
        "parameters": {
            "aws_access_key_id": "a",
            "aws_secret_access_key": "b",
            "aws_default_region": "",
        },
    }
    assert make(host, payload).section["region"] == ""


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "change", "parameter", "error"),
    [
        ("aws", {"url": "s3:s3.amazonaws.com"}, "url", "pattern"),
        ("aws", {"url": "s3:minio.example.org/b"}, "url", "pattern"),
        ("generic-s3", {"url": "s3:ftp://h/b"}, "url", "pattern"),
        ("generic-s3", {"url": "s3:h:99999/b"}, "url", "pattern"),
        ("generic-s3", {"url": "s3:h/b/../x"}, "url", "pattern"),
        ("generic-s3", {"url": "s3:evil.host\n[x]/b"}, "url", "pattern"),
        ("backblaze", {"url": "b2:ab"}, "url", "pattern"),
        ("azure", {"url": "azure:Bad_Container"}, "url", "pattern"),
        ("smb", {"url": "smb:"}, "url", "pattern"),
        ("webdav", {"url": "webdav:ftp://h/x"}, "url", "pattern"),
        ("webdav", {"url": "webdav:https://h/x?y=1"}, "url", "pattern"),
        ("cluster", {"url": "webdav:http://10.0.0.1"}, "url", "pattern"),
        ("cluster", {"parameters": {"x": "1"}}, "x", "additionalProperties"),
        ("aws", {"parameters": {"aws_access_key_id": "a"}}, "aws_secret_access_key", "required"),
        (
            "backblaze",
            {"parameters": {"b2_account_id": "id", "b2_account_key": "k", "extra": "1"}},
            "extra",
            "additionalProperties",
        ),
        (
            "smb",
            {"parameters": {"smb_host": "bad host", "smb_user": "u", "smb_pass": "p"}},
            "smb_host",
            "pattern",
        ),
        (
            "smb",
            {
                "parameters": {
                    "smb_host": "h",
                    "smb_user": "u",
                    "smb_pass": "p",
                    "smb_port": "70000",
                }
            },
            "url",
            "pattern",
        ),
        (
            "azure",
            {
                "parameters": {
                    "azure_account_name": "acc",
                    "azure_account_key": "k",
                    "endpoint": "http://h/x?q",
                }
            },
            "endpoint",
            "pattern",
        ),
        ("webdav", {"parameters": {"webdav_vendor": "nope"}}, "webdav_vendor", "pattern"),
    ],
)
def test_bad_input_names_the_field(
    host: PluginHost, name: str, change: dict[str, Any], parameter: str, error: str
) -> None:
    errors = errors_of(host, {**REQUESTS[name], **change})
    assert any(e["parameter"] == parameter and e["error"] == error for e in errors), errors
    assert all(e["message"] for e in errors)


@pytest.mark.parametrize("name", [n for n in sorted(REQUESTS) if n not in ("cluster", "rclone")])
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b", "a\tb", "x\n[evil]\ntype = local"])
def test_control_characters_in_any_parameter_are_refused(
    host: PluginHost, name: str, bad: str
) -> None:
    payload = REQUESTS[name]
    for key in payload["parameters"]:
        params = {**payload["parameters"], key: bad}
        errors = errors_of(host, {**payload, "parameters": params})
        assert [e["parameter"] for e in errors] == [key]
        secret = (
            host.provider(name)
            .parameters[[p.name for p in host.provider(name).parameters].index(key)]
            .secret
        )
        if secret:
            assert errors[0]["value"] == "***"


@pytest.mark.parametrize("field", ["url", "name", "provider", "password"])
def test_control_characters_in_top_level_fields_are_refused(host: PluginHost, field: str) -> None:
    payload = {**REQUESTS["backblaze"], field: "x\ny"}
    errors = errors_of(host, payload)
    assert errors[0]["field"] == field
    if field == "password":
        assert errors[0]["value"] == "***"


def test_unknown_top_level_keys_and_provider(host: PluginHost) -> None:
    assert (
        errors_of(host, {**REQUESTS["backblaze"], "extra": 1})[0]["error"] == "additionalProperties"
    )
    assert (
        errors_of(host, {**REQUESTS["backblaze"], "provider": "nope"})[0]["error"]
        == "backup_provider_unknown"
    )
    assert errors_of(host, {"url": "b2:x"})[0]["error"] == "required"


# -- UUIDs and names --------------------------------------------------------------------------


def test_uuid_does_not_depend_on_secrets_or_credentials(host: PluginHost) -> None:
    first = make(host, REQUESTS["backblaze"])
    other_creds = make(
        host,
        {
            **REQUESTS["backblaze"],
            "parameters": {"b2_account_id": "other", "b2_account_key": "zzz"},
            "name": "Named",
            "password": "x" * 64,
        },
    )
    assert first.id == other_creds.id  # same location: one destination (ref §14.8, §14.22)
    elsewhere = make(host, {**REQUESTS["backblaze"], "url": "b2:mybucket/other"})
    assert elsewhere.id != first.id
    assert first.id == destination_uuid("backblaze", {"url": "b2:mybucket"})


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_uuid_is_stable_for_the_same_request(host: PluginHost, name: str) -> None:
    assert make(host, REQUESTS[name]).id == make(host, REQUESTS[name]).id


def test_given_name_wins(host: PluginHost) -> None:
    assert make(host, {**REQUESTS["aws"], "name": "Offsite"}).name == "Offsite"


# -- alter ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in sorted(REQUESTS) if n != "cluster"])
def test_alter_with_empty_secret_keeps_the_stored_one(host: PluginHost, name: str) -> None:
    original = make(host, {**REQUESTS[name], "name": "Orig"})
    stored = stored_destination(original.id, original.public(), original.rclone_conf)
    provider = host.provider(name)
    params = dict(REQUESTS[name]["parameters"])
    for p in provider.parameters:
        if p.secret and p.name in params:
            params[p.name] = ""
    altered = make(host, {"id": original.id, "provider": name, "parameters": params}, stored)
    assert altered.id == original.id and altered.name == "Orig"
    assert CANARY in altered.rclone_conf or reveal(altered.section["pass"]) == CANARY
    assert altered.basepath == original.basepath


def test_alter_can_change_url_and_keeps_uuid(host: PluginHost) -> None:
    original = make(host, REQUESTS["generic-s3"])
    stored = stored_destination(original.id, original.public(), original.rclone_conf)
    altered = make(
        host,
        {
            "id": original.id,
            "provider": "generic-s3",
            "url": "s3:http://127.0.0.1:9000/other",
            "parameters": {"aws_secret_access_key": ""},
        },
        stored,
    )
    assert altered.id == original.id and altered.basepath == "other"
    assert altered.section["secret_access_key"] == CANARY


def test_alter_provider_mismatch(host: PluginHost) -> None:
    original = make(host, REQUESTS["backblaze"])
    stored = stored_destination(original.id, original.public(), original.rclone_conf)
    with pytest.raises(ValidationFailed) as info:
        make(host, {**REQUESTS["aws"], "id": original.id}, stored)
    assert info.value.errors[0].error == "backup_provider_mismatch"


def test_alter_without_stored_secret_is_an_error_not_none(host: PluginHost) -> None:
    stored = stored_destination(
        "u1",
        {"provider": "aws", "url": REQUESTS["aws"]["url"]},
        "[u1]\ntype = s3\naccess_key_id = a\n",
    )
    with pytest.raises(ValidationFailed) as info:
        make(
            host,
            {
                "id": "u1",
                "provider": "aws",
                "parameters": {"aws_access_key_id": "a", "aws_secret_access_key": ""},
            },
            stored,
        )
    assert info.value.errors[0].parameter == "aws_secret_access_key"


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_parameters_from_section_hides_secrets(host: PluginHost, name: str) -> None:
    prepared = make(host, REQUESTS[name])
    provider = host.provider(name)
    section = ini.parse(prepared.rclone_conf)[prepared.id]
    hidden = provider.parameters_from_section(section, hide_secrets=True)
    assert CANARY not in str(hidden)
    shown = provider.parameters_from_section(section, hide_secrets=False)
    if name != "cluster":
        assert CANARY in str(shown)


# -- the raw rclone provider ------------------------------------------------------------------


def raw(conf: str | None, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"rclone_conf_secret": conf, "basepath": "bk"}
    params.update(extra)
    return {"provider": "rclone", "name": "", "url": "", "parameters": params}


def test_raw_header_is_normalised_to_the_uuid(host: PluginHost) -> None:
    with_header = make(host, raw("[whatever]\ntype = sftp\nhost = h.example\nuser = u\n"))
    without = make(host, raw("type = sftp\nhost = h.example\nuser = u\n"))
    assert with_header.id == without.id
    assert ini.parse(with_header.rclone_conf) == {
        with_header.id: {"type": "sftp", "host": "h.example", "user": "u", "shell_type": "none"}
    }
    assert with_header.url == "rclone:sftp:h.example:bk"
    assert with_header.public_basepath == "bk"


def test_raw_base64(host: PluginHost) -> None:
    text = "type = s3\nendpoint = https://s3.example.org/\n"
    b64 = base64.b64encode(text.encode()).decode()
    prepared = make(host, raw(None, rclone_conf_b64_secret=b64))
    assert prepared.url == "rclone:s3:s3.example.org:bk"
    errors = errors_of(host, raw(None, rclone_conf_b64_secret="%%%"))
    assert errors[0]["error"] == "invalid_base64" and errors[0]["value"] == "***"


@pytest.mark.parametrize(
    ("conf", "needle"),
    [
        ("[a]\ntype = s3\n[combined]\ntype = combine\n", "exactly one section"),
        ("type = local\n", "not allowed"),
        ("type = alias\nremote = /etc\n", "not allowed"),
        ("type = crypt\nremote = x:\n", "not allowed"),
        ("type = union\n", "not allowed"),
        ("type = sftp\nssh = touch /tmp/pwned\n", "runs a command"),
        ("type = sftp\nmd5sum_command = id\n", "runs a command"),
        ("type = sftp\nkey_file = /etc/shadow\n", "names a file"),
        ("type = sftp\nset_env = A=B\n", "environment"),
        ("type = s3\nenv_auth = true\n", "environment"),
        ("type = s3\nshared_credentials_file = /root/.aws/credentials\n", "names a file"),
        ("type = webdav\nbearer_token_command = id\n", "runs a command"),
        ("type = smb\nkerberos_ccache = /tmp/x\n", "names a file"),
        ("type = sftp\npin_host_key = true\n", "write to its configuration"),
        ("type = s3\nno_such_option = 1\n", "does not exist"),
        ("type = sftp\npass = cleartext!\n", "must be obscured"),
        ("region = x\n", "no 'type'"),
        ("", "required"),
        ("[a]\ntype = s3\n  continued\n", "continuation"),
        ("type = nonexistent\n", "not allowed"),
    ],
)
def test_raw_refusals(host: PluginHost, conf: str, needle: str) -> None:
    errors = errors_of(host, raw(conf))
    assert needle in errors[0]["message"], errors
    assert errors[0]["value"] == "***"


def test_raw_basepath_is_checked(host: PluginHost) -> None:
    for bad in ["../etc", "a/../b", "a\nb", 'x" y', "//"]:
        try:
            prepared = make(host, raw("type = sftp\nhost = h\n", basepath=bad))
        except ValidationFailed as exc:
            assert exc.errors[0].parameter == "basepath"
        else:  # accepted values must survive the combine quoting
            assert bad in ('x" y', "//")
            assert prepared.basepath == bad.strip("/")


def test_raw_extra_types_by_configuration(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = "type = cloudinary\ncloud_name = x\n"
    assert "not allowed" in errors_of(host, raw(conf))[0]["message"]
    monkeypatch.setenv("NSBACKUP_RCLONE_EXTRA_TYPES", "cloudinary, local, http")
    assert make(host, raw(conf)).section["type"] == "cloudinary"
    # wrapping, local and read-only backends stay refused whatever the configuration says
    assert "not allowed" in errors_of(host, raw("type = local\n"))[0]["message"]
    assert "not allowed" in errors_of(host, raw("type = http\nurl = https://h/\n"))[0]["message"]


def test_raw_obscured_password_is_kept_and_hidden(host: PluginHost) -> None:
    secret = obscure(CANARY)
    prepared = make(host, raw(f"type = sftp\nhost = h\nuser = u\npass = {secret}\n"))
    assert prepared.section["pass"] == secret
    assert "***" in display_conf(prepared) and secret not in display_conf(prepared)
    assert secret in display_conf(prepared, show_secrets=True)


@pytest.mark.parametrize(
    "line",
    [
        f"url = https://user:{CANARY}@dav.example.org/dav",
        f"url = http://u:{CANARY}@[::1]:8080/",
        f"endpoint = https://{CANARY}:{CANARY}@s3.example.org",
    ],
)
def test_raw_url_with_a_password_is_hidden(host: PluginHost, line: str) -> None:
    """Whatever the option's name: a URL carrying a password is as secret as the password."""
    kind = "webdav" if line.startswith("url") else "s3"
    prepared = make(host, raw(f"type = {kind}\n{line}\n"))
    for text in (display_conf(prepared), str(prepared.public()), repr(prepared), prepared.url):
        assert CANARY not in text
    assert CANARY in display_conf(prepared, show_secrets=True)


def test_raw_uuid_ignores_passwords(host: PluginHost) -> None:
    a = make(host, raw(f"type = sftp\nhost = h\nuser = u\npass = {obscure('one')}\n"))
    b = make(host, raw(f"type = sftp\nhost = h\nuser = u\npass = {obscure('two')}\n"))
    assert a.id == b.id


# The raw provider's only secret is the whole configuration text: covered by its own tests above.
@pytest.mark.parametrize("name", [n for n in sorted(REQUESTS) if n != "rclone"])
def test_builtin_providers_pass_the_conformance_suite(host: PluginHost, name: str) -> None:
    from nsbackup.testing import check_provider

    check_provider(host.provider(name), [REQUESTS[name]])

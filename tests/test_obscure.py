from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsbackup import rclone
from nsbackup.obscure import RevealError, is_obscured, obscure, reveal


def test_ns8_vector() -> None:
    assert reveal("YCNNJ_5NenMsPtfHmfxt9yb08zGnuA") == "secret"


def test_fixed_iv_is_deterministic() -> None:
    iv = bytes(range(16))
    assert obscure("secret", iv=iv) == obscure("secret", iv=iv)
    assert obscure("secret") != obscure("secret")  # random IV


@given(st.text())
def test_round_trip(text: str) -> None:
    assert reveal(obscure(text)) == text


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "a b c d e f g h i j k l m n",
        "YCNNJ_5NenMsPtfHmfxt9yb08zGnuA=",
        "!!!!!!!!!!!!!!!!!!!!!!!!!!",
    ],
)
def test_reveal_refuses_non_obscured(bad: str) -> None:
    with pytest.raises(RevealError):
        reveal(bad)
    assert not is_obscured(bad)


SAMPLES = ["secret", "", "p@ss w0rd%", "ünïcødé ☃", "x" * 300, '"quoted" `tick` \\ back']


@pytest.mark.parametrize("text", SAMPLES)
def test_real_rclone_reveals_what_we_obscure(text: str) -> None:
    result = rclone.run(["reveal", "--", obscure(text)], timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == text


@pytest.mark.parametrize("text", [s for s in SAMPLES if s])
def test_we_reveal_what_real_rclone_obscures(text: str) -> None:
    result = rclone.run(["obscure", "--", text], timeout=30)
    assert result.returncode == 0, result.stderr
    assert reveal(result.stdout.strip()) == text


@settings(max_examples=15, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1))
def test_real_rclone_round_trip_property(text: str) -> None:
    result = rclone.run(["reveal", "--", obscure(text)], timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout[:-1] == text

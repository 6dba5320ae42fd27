import pytest

from tandem.app.security import host_name, origin_host


@pytest.mark.parametrize(
    "header, expected",
    [
        ("127.0.0.1:8742", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("[::1]:8742", "::1"),
        ("evil.example:80", "evil.example"),
        ("", ""),
    ],
)
def test_host_header_name(header, expected):
    assert host_name(header) == expected


def test_origin_host():
    assert origin_host("http://127.0.0.1:8742") == "127.0.0.1"
    assert origin_host("https://evil.example") == "evil.example"
    assert origin_host("null") is None

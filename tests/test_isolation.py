import os
import socket

import pytest

# conftest is loaded by pytest under its own module name: match the guard's error by type and text.

def test_each_test_has_private_home_and_no_credentials(isolated_env):
    assert os.environ["HOME"].startswith(str(isolated_env))
    assert os.environ["KAGGLE_CONFIG_DIR"].startswith(str(isolated_env))
    assert os.environ["KR_HOME"].startswith(str(isolated_env))
    assert "KAGGLE_KEY" not in os.environ and "KAGGLE_USERNAME" not in os.environ


def test_guard_refuses_non_loopback_connections():
    with socket.socket() as sock, pytest.raises(AssertionError, match="non-loopback"):
        sock.connect(("192.0.2.1", 443))
    with pytest.raises(AssertionError, match="non-loopback"):
        socket.getaddrinfo("api.kaggle.com", 443)


def test_guard_allows_loopback():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass

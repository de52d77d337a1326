import pytest

from broker import Broker


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", help="soak modes: more data, longer runs")


@pytest.fixture
def long_mode(request) -> bool:
    return request.config.getoption("--long")


@pytest.fixture
def broker(tmp_path):
    """A fresh single broker on a free port, stopped (and checked for panics) after the test."""
    b = Broker(tmp_path / "data").start()
    yield b
    code = b.stop()
    b.assert_no_panic()
    assert code == 0, f"broker exited with {code} on SIGTERM:\n{b.log_tail()}"


@pytest.fixture
def make_broker(tmp_path):
    """Factory for tests that need control over start arguments; all are stopped afterwards."""
    made = []

    def make(**kwargs) -> Broker:
        b = Broker(tmp_path / f"data{len(made)}", **kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        b.kill()
        b.assert_no_panic()

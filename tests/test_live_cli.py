"""``goalhorn live`` and ``goalhorn topics`` when something is off: no Redis setting, Redis down, a game id
that is no game key. One line saying what to fix, exit 2, never an empty answer that looks real."""

from __future__ import annotations

import pytest

from tests.processes import clean_env, real_env, run_command

pytestmark = pytest.mark.real


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["live", "channels"], clean_env(), "error: GOALHORN_REDIS_URL is not set"),
        (["live", "game", "espn:1"], clean_env(), "error: GOALHORN_REDIS_URL is not set"),
        (["live", "channels"], "down", "error: Redis does not answer or refused"),
        (["live", "game", "espn:1"], "down", "error: Redis does not answer or refused"),
        (["live", "game", "401461455"], "real", "error: '401461455' is no game key"),
        (["live", "game", "nonsense"], "real", "error: 'nonsense' is no game key"),
    ],
)
def test_live_commands_say_what_is_wrong(args: list[str], env: object, says: str) -> None:
    if env == "down":
        env = real_env(GOALHORN_REDIS_URL="redis://127.0.0.1:1/0")
    elif env == "real":
        env = real_env()
    assert isinstance(env, dict)
    done = run_command(args, env, timeout_s=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(says), done.stderr
    assert "Traceback" not in done.stderr


def test_live_game_of_a_game_nobody_registered_for_answers_zeros() -> None:
    done = run_command(["live", "game", "espn:401461455", "--json"], real_env(), timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert '"update_tokens": 0' in done.stdout


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["topics", "status"], clean_env(), "error: GOALHORN_REDIS_URL is not set"),
        (["topics", "status"], "down", "error: Redis does not answer or refused"),
        (["topics", "sync", "6"], "real", "error: GOALHORN_FCM_CREDENTIALS_FILE is not set"),
    ],
)
def test_topics_commands_say_what_is_wrong(args: list[str], env: object, says: str) -> None:
    if env == "down":
        env = real_env(GOALHORN_REDIS_URL="redis://127.0.0.1:1/0")
    elif env == "real":
        env = real_env()
    assert isinstance(env, dict)
    done = run_command(args, env, timeout_s=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(says), done.stderr
    assert "Traceback" not in done.stderr

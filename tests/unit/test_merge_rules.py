"""Merge rules as a pure function."""

from ingestd.policy.merge import Known, State, merge

OLD = "https://h/v?expire=100"
NEW = "https://h/v?expire=200"


def known(state: State, url: str = OLD, topics: tuple[str | None, ...] = ("a",)) -> Known:
    return Known(url, topics, ("e1.json",), state)


def test_known_id_gains_topic_and_source() -> None:
    change = merge(known(State.PENDING), OLD, "b", "e2.json")
    assert change.topics == ("a", "b") and change.sources == ("e1.json", "e2.json")
    assert change.changed and change.url == OLD and not change.reset_attempts
    same = merge(known(State.PENDING), OLD, "a", "e1.json")
    assert not same.changed and same.topics == ("a",)


def test_expired_and_failed_come_back_with_a_fresh_url() -> None:
    for state in (State.EXPIRED, State.FAILED):
        change = merge(known(state), NEW, "a", "e2.json")
        assert change.state is State.PENDING and change.reset_attempts and change.url == NEW


def test_pending_gets_the_new_url_without_reset() -> None:
    change = merge(known(State.PENDING), NEW, "a", "e2.json")
    assert change.url == NEW and change.state is State.PENDING and not change.reset_attempts


def test_an_older_url_never_replaces_a_fresher_one() -> None:
    change = merge(known(State.EXPIRED, url=NEW), OLD, "a", "e0.json")
    assert change.url == NEW and change.state is State.EXPIRED and not change.reset_attempts


def test_done_is_never_downloaded_again_but_gains_links() -> None:
    change = merge(known(State.DONE), NEW, "b", "e2.json")
    assert change.state is State.DONE and change.url == OLD and change.relink
    again = merge(known(State.DONE), NEW, "a", "e2.json")
    assert not again.relink and not again.changed

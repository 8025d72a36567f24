"""What a batch amounts to: sums, combined progress, the last ETA, when it has ended."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.domain.batch import BatchMember, BatchSummary
from bot.domain.history import EXPIRED_REASON, Outcome
from bot.domain.status import ImportStatus, Status


def member(
    token: int,
    state: Status = Status.PROCESSING,
    *,
    validated: int = 100,
    processed: int = 0,
    exceptions: int = 0,
    ended: str | None = None,
    eta: float | None = None,
) -> BatchMember:
    status = ImportStatus(
        access_token=token,
        status=state,
        validation_successful=validated,
        processed=processed,
        exceptions=exceptions,
        not_honored=0,
        total_records_received=validated + 1,
    )
    return BatchMember(token, status, ended, eta)


def test_counts_and_progress_are_the_sums_of_the_imports() -> None:
    batch = BatchSummary(
        (
            member(1, validated=1000, processed=500),
            member(2, validated=3000, processed=1000, exceptions=20),
            member(3, Status.QUEUED, validated=0),
        )
    )
    assert batch.total("validation_successful") == 4000
    assert batch.total("processed") == 1500
    assert batch.total("total_records_received") == 4003
    assert (batch.done, batch.validated) == (1520, 4000)
    assert batch.progress == 1520 / 4000


@given(
    st.lists(
        st.tuples(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**6)),
        min_size=1,
        max_size=20,
    )
)
def test_combined_progress_is_records_done_over_records_validated(
    counts: list[tuple[int, int, int]],
) -> None:
    batch = BatchSummary(
        tuple(
            member(i, validated=v, processed=p, exceptions=e)
            for i, (v, p, e) in enumerate(counts, 1)
        )
    )
    validated = sum(v for v, _, _ in counts)
    done = sum(p + e for _, p, e in counts)
    assert (batch.done, batch.validated) == (done, validated)
    if validated:
        assert batch.progress == min(1.0, done / validated)
    else:
        assert batch.progress is None


def test_unknown_counts_stay_unknown_rather_than_zero() -> None:
    blank = BatchMember(7, ImportStatus(access_token=7, status=Status.INITIATED))
    assert BatchSummary((blank,)).total("processed") is None
    assert BatchSummary((blank, BatchMember(8, None))).progress is None


def test_the_eta_is_the_last_imports_and_unknown_while_one_has_none() -> None:
    assert BatchSummary((member(1, eta=60), member(2, eta=600))).eta_seconds == 600
    assert BatchSummary((member(1, eta=60), member(2, Status.QUEUED))).eta_seconds is None
    done = member(2, Status.COMPLETED, processed=100, ended="Completed")
    assert BatchSummary((member(1, eta=60), done)).eta_seconds == 60


def test_a_batch_ends_when_every_import_has_and_knows_what_went_wrong() -> None:
    completed = member(1, Status.COMPLETED, processed=100, ended="Completed")
    running = member(2)
    assert not BatchSummary((completed, running)).ended
    clean = BatchSummary((completed,))
    assert clean.ended and not clean.went_wrong
    assert clean.outcomes == {Outcome.COMPLETED: 1}
    dirty = member(3, Status.COMPLETED, processed=90, exceptions=10, ended="Completed")
    assert BatchSummary((completed, dirty)).went_wrong
    expired = member(4, Status.QUEUED, ended=EXPIRED_REASON)
    assert BatchSummary((completed, expired)).went_wrong
    stopped = BatchSummary((member(5, ended="unwatched by <@U1>"),))
    assert stopped.all_stopped and not stopped.went_wrong

"""The broker benchmark's own arithmetic: what it prints is only as right as these."""

import math

from bench.broker_bench import (
    RoleWatch,
    Summary,
    after_recovery,
    delays,
    percentile,
    read_worker_log,
    refused_by_target,
    slots,
    split_kinds,
)


def test_it_takes_nearest_rank_percentiles():
    values = list(range(1, 101))  # 1 … 100, shuffled order must not matter
    values.reverse()
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1, 2, 3], 0.5) == 2
    assert percentile([1, 2, 3, 4], 0.5) == 2
    assert math.isnan(percentile([], 0.5))


def test_it_summarises_with_the_true_maximum():
    summary = Summary.of([0.3, 0.1, 5.0, 0.2])
    assert summary == Summary(count=4, p50=0.2, p99=5.0, max=5.0)
    many = Summary.of([*range(1, 200), 1000])  # 200 values: p99 is the 198th, max the outlier
    assert (many.p99, many.max) == (198, 1000)
    assert Summary.of([]).count == 0


def test_it_counts_a_role_gone_at_the_first_poll_without_it():
    watch = RoleWatch()
    watch.track("custody_a")
    watch.track("custody_b")
    watch.observe({"custody_a", "custody_b", "someone_else"}, at=1.0)
    watch.observe({"custody_b"}, at=2.0)
    watch.observe(set(), at=3.0)
    watch.observe({"custody_a"}, at=4.0)  # a name back again does not move its first absence
    assert watch.gone_at == {"custody_a": 2.0, "custody_b": 3.0}
    assert watch.live() == set()


def test_it_never_counts_a_role_it_never_saw():
    watch = RoleWatch()
    watch.track("custody_late")
    watch.observe(set(), at=1.0)  # not created yet: not gone
    assert watch.gone_at == {}
    assert watch.live() == {"custody_late"}
    watch.observe({"custody_late"}, at=2.0)
    watch.observe(set(), at=3.0)
    assert watch.gone_at == {"custody_late": 3.0}


def test_it_measures_delays_only_where_both_moments_are_known():
    ends = {1: 10.0, 2: 20.0, 3: 30.0}
    marks = {1: 10.5, 3: 29.9, 4: 50.0}
    assert sorted(delays(ends, marks)) == [-0.10000000000000142, 0.5]


def test_it_measures_recovery_from_the_target_back_up():
    down_at, up_at = 100.0, 130.0
    ends = {
        1: 90.0,  # destroyed before the outage: not waiting for the target
        2: 99.0,  # ended before it, still there when it went down
        3: 115.0,  # ended during it
        4: 140.0,  # ended after it came back: an ordinary destruction
    }
    marks = {1: 90.2, 2: 131.0, 3: 133.0, 4: 140.3}
    assert sorted(after_recovery(ends, marks, down_at, up_at)) == [1.0, 3.0]


def test_it_splits_the_mix_exactly_and_spreads_each_kind():
    kinds = split_kinds(500, {"expired": 60, "revoked": 20, "completed": 20})
    assert len(kinds) == 500
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "expired": 300,
        "revoked": 100,
        "completed": 100,
    }
    # Each kind in every tenth of the window, in proportion.
    for tenth in range(10):
        part = kinds[tenth * 50 : (tenth + 1) * 50]
        assert 28 <= part.count("expired") <= 32
        assert 8 <= part.count("revoked") <= 12
    eleven = split_kinds(11, {"expired": 60, "revoked": 20, "completed": 20})  # 6.6, 2.2, 2.2
    assert [eleven.count(k) for k in ("expired", "revoked", "completed")] == [7, 2, 2]
    # The largest remainder gets the odd one: 2.25, 1.75, 1.0 → 2, 2, 1 (not 3, 1, 1).
    five = split_kinds(5, {"expired": 45, "revoked": 35, "completed": 20})
    assert [five.count(k) for k in ("expired", "revoked", "completed")] == [2, 2, 1]
    odd = split_kinds(7, {"expired": 1, "revoked": 1, "completed": 1})
    assert sorted(odd.count(k) for k in ("expired", "revoked", "completed")) == [2, 2, 3]


def test_it_spreads_slots_over_the_whole_window():
    assert slots(100.0, 60.0, 4) == [100.0, 120.0, 140.0, 160.0]
    assert slots(100.0, 60.0, 1) == [100.0]


def test_it_tells_a_refused_login_from_a_target_that_is_down():
    refused = (
        'connection failed: connection to server at "127.0.0.1", port 5 failed: FATAL:  '
        'password authentication failed for user "custody_g1"'
    )
    down = (
        'connection failed: connection to server at "127.0.0.1", port 5 failed: Connection '
        "refused\n\tIs the server running on that host and accepting TCP/IP connections?"
    )
    starting = "FATAL:  the database system is starting up"
    assert refused_by_target(Exception(refused))
    assert refused_by_target(Exception('FATAL:  role "custody_g1" is not permitted to log in'))
    assert not refused_by_target(Exception(down))
    assert not refused_by_target(Exception(starting))


def test_it_reads_the_workers_account_of_destroy_tasks():
    task = "Task brokers.tasks.destroy_credential"
    log = "\n".join(
        [
            f'{{"message": "{task}[a1] received"}}',
            f'{{"message": "{task}[a1] retry: Retry in 1s"}}',
            f'{{"message": "{task}[a1] received"}}',
            f'{{"message": "{task}[a1] succeeded in 0.25s: \'destroyed\'"}}',
            f'{{"message": "{task}[b2] succeeded in 0.02s: \'skipped\'"}}',
            '{"message": "Task brokers.tasks.sweep_credentials[c3] succeeded in 0.1s: 12"}',
            '{"message": "Task brokers.tasks.sweep_credentials[c4] succeeded in 0.1s: 0"}',
            '{"level": "ERROR", "message": "Credential custody_g1_ab is still not destroyed"}',
        ]
    )
    account = read_worker_log(log)
    assert account == {
        "received": 2,
        "outcomes": {"destroyed": 1, "skipped": 1},
        "retries": 1,
        "destroy_seconds": [0.25],
        "sweep_sent": 12,
        "errors": 1,
    }

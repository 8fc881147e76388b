"""The PLC's side of the handshake with injected time: part ids as jobs to the daemon, results to acknowledge."""

from edge.bridge.handshake import NOT_ANSWERED, RESEND_S, PartJobs, ResultAcks
from edge.transport import wire

SESSION = "0123456789abcdef"


def decision(seq: int, session: str = SESSION) -> wire.Decision:
    return wire.Decision("cam1", seq, "ok", "", 0.1, 0.5, 0, 0, 0, 0.0, "m", "t1", session=session, seq=seq)


def test_a_part_is_refused_at_once_while_the_daemon_is_unknown():
    jobs = PartJobs()
    future = jobs.submit("P1")
    assert jobs.due("", 0.0) == []
    reply = future.result(0)
    assert not reply.accepted and reply.job == NOT_ANSWERED and "not been heard from" in reply.error


def test_a_job_is_resent_until_answered_and_an_answer_arms_it_as_pending_until_its_decision():
    jobs = PartJobs(answer_timeout_s=1.0)
    future = jobs.submit("P1")
    [request] = jobs.due(SESSION, 10.0)
    assert request == wire.PartRequest("P1", 1, jobs.origin, SESSION)
    assert jobs.due(SESSION, 10.0 + RESEND_S / 2) == []
    assert jobs.due(SESSION, 10.0 + RESEND_S) == [request]
    jobs.answered(wire.PartReply("P1", 1, "f" * 16, True))  # another bridge run's answer: ignored
    assert not future.done()
    jobs.answered(wire.PartReply("P1", 1, jobs.origin, True))
    jobs.answered(wire.PartReply("P1", 1, jobs.origin, True))  # the resend's answer: already answered
    assert future.result(0).accepted and list(jobs.pending_parts) == ["P1"]
    jobs.decided("P1")
    assert not jobs.pending_parts


def test_a_job_the_daemon_never_answers_is_refused_after_the_timeout():
    jobs = PartJobs(answer_timeout_s=1.0)
    future = jobs.submit("P1")
    jobs.due(SESSION, 0.0)
    jobs.due(SESSION, 1.01)
    reply = future.result(0)
    assert not reply.accepted and reply.job == NOT_ANSWERED and "did not answer within 1 s" in reply.error


def test_results_not_acknowledged_in_time_are_counted_late_and_an_acknowledgement_covers_every_earlier_seq():
    acks = ResultAcks(timeout_s=2.0)
    for seq in (1, 2, 3):
        acks.delivered(decision(seq), 0.0)
    acks.acknowledge(2)
    assert acks.expire(1.9) == [] and acks.acked_seq == 2
    assert acks.expire(2.0) == [(SESSION, 3)] and acks.late == 1
    acks.delivered(decision(1, "f" * 16), 3.0)  # the daemon restarted: seq 1 of a new session
    acks.acknowledge(1)
    assert acks.expire(10.0) == [] and acks.late == 1


def test_without_a_timeout_nothing_is_expected_of_the_plc():
    acks = ResultAcks(timeout_s=None)
    acks.delivered(decision(1), 0.0)
    assert acks.expire(1e9) == [] and acks.late == 0

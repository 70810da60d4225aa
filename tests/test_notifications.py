"""Chat and mail notices: Slack incoming webhooks and Teams workflow webhooks get the exact JSON
their APIs take, mail reaches a real SMTP server (aiosmtpd on loopback, STARTTLS and login
included) with its subject, body and headers; a 5xx is retried and a receiver that keeps failing
is given up with a log line; a slow receiver never holds up the loop; a webhook URL, a secret,
shows in no name, warning or log line. End to end: a reconcile of a real Debian root (apt and
dpkg in a directory) tells Slack the window started and ended, with its counts.

The receivers are real HTTP servers on loopback (tests/test_events.py's); no Slack or Teams runs
here, so the payloads are checked against what their documentation says they take.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message as Mail
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword

from reconciler.redaction import secret_url
from reconciler.report.notify.chat.messages import message, parse_kinds, plain_text, slack, teams
from reconciler.report.notify.chat.sinks import EmailSink, SlackSink, Smtp, TeamsSink
from reconciler.report.notify.events import Retry
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.report.views.render import short_revision
from tests.aptlab import Pkg, Repo
from tests.conftest import INSTALLED, needs_apt
from tests.fleet import (
    BASELINE_YAML,
    documents,
    local_instance_yaml,
    make_fleet,
    window_yaml,
)
from tests.test_events import (
    BEFORE,
    PATCHCTL,
    ROOT,
    Receiver,
    Warnings,
    closed_port,
    occurrence,
    serving,
)
from tests.waiting import wait_until

FAST = Retry(attempts=3, base=0.01, cap=0.05)
SECRET_PATH = "/services/T000/B000/XXXXsecretXXXX"


def window_ended(status: str = "SUCCESS", **counts: int) -> Occurrence:
    return occurrence(
        Kind.WINDOW_EXECUTION_CHANGED,
        window="noon",
        opening="2026-11-28T12:00:00Z",
        status=status,
        previous="IN_PROGRESS",
        counts={"jobs": 3, "installed": 2, "failed": 0, "pendingReboot": 1, "running": 0, **counts},
    )


def machine_failed() -> Occurrence:
    return occurrence(
        Kind.JOB_FINISHED,
        "web-1",
        operation="Install",
        status="failed",
        window="noon",
        error={"code": "INSTALL_FAILED", "message": "dpkg: error"},
        seconds=42.0,
        output="Setting up pwtest-lib ...\ndpkg: error processing package pwtest-lib",
    )


@pytest.fixture(name="receiver")
def loopback_receiver() -> Iterator[Receiver]:
    with serving() as state:
        yield state


FOOTER = "main@sha1:aaaaaaaaaaaa by Ada · 2026-11-28T12:00:00Z"


# --- 1. what a notice says (pure) ------------------------------------------------------------


def test_each_template_reads_as_a_sentence_with_its_facts() -> None:
    started = message(
        occurrence(
            Kind.WINDOW_EXECUTION_CHANGED,
            window="noon",
            opening="2026-11-28T12:00:00Z",
            status="IN_PROGRESS",
            previous=None,
        )
    )
    assert (started.title, started.facts) == (
        "Window noon started",
        (("Opening", "2026-11-28T12:00:00Z"),),
    )
    ended = message(window_ended())
    assert ended.title == "Window noon ended: SUCCESS"
    assert ended.facts == (
        ("Opening", "2026-11-28T12:00:00Z"),
        ("Installed", "2"),
        ("Failed", "0"),
        ("Pending reboot", "1"),
    )
    # A FAILED execution is announced at its first failure, while other jobs still run.
    early = message(window_ended("FAILED", failed=1, running=2))
    assert (early.title, early.tone) == ("Window noon FAILED, 2 job(s) still running", "attention")
    failed = message(machine_failed())
    assert failed.title == "Machine web-1 failed: Install in window noon"
    assert dict(failed.facts)["Duration"] == "42 s"
    assert failed.output.endswith("dpkg: error processing package pwtest-lib")
    gate = message(
        occurrence(
            Kind.GATE_BLOCKED,
            gate="alerts",
            scope="task patch of window noon",
            since="2026-11-28T11:15:00Z",
            blockedSeconds=2700,
            reason="alert HighLoad is firing",
        )
    )
    assert gate.title == "Gate alerts has blocked task patch of window noon for 45 min"
    halted = message(
        occurrence(Kind.ROLLOUT_HALTED, rollout="web", cycle=3, reason="2 of 4 failed in canary")
    )
    assert halted.title == "Rollout web halted: 2 of 4 failed in canary"
    assert dict(halted.facts)["Resume with"] == "patchctl rollout resume web"
    generic = message(
        occurrence(
            Kind.COMPLIANCE_CHANGED,
            "db-1",
            status="NON_COMPLIANT",
            previous="COMPLIANT",
            operation="Scan",
        )
    )
    assert generic.title == "compliance.changed db-1: COMPLIANT -> NON_COMPLIANT (Scan)"
    assert {m.footer for m in (started, ended, failed, gate, halted, generic)} == {FOOTER}


def test_slack_gets_mrkdwn_with_its_three_characters_escaped() -> None:
    assert slack(message(machine_failed())) == {
        "text": "*Machine web-1 failed: Install in window noon*\n"
        "*Machine:* web-1\n*Operation:* Install\n*Window:* noon\n*Error:* INSTALL_FAILED\n"
        "*Job:* 17\n*Duration:* 42 s\n"
        "```Setting up pwtest-lib ...\ndpkg: error processing package pwtest-lib```\n"
        f"_{FOOTER}_"
    }
    tricky = occurrence(Kind.ROLLOUT_HALTED, rollout="web", cycle=1, reason="<a> & <b>")
    assert slack(message(tricky))["text"].startswith(
        "*Rollout web halted: &lt;a&gt; &amp; &lt;b&gt;*"
    )


def test_teams_gets_one_adaptive_card() -> None:
    assert teams(message(window_ended())) == {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {
                            "type": "TextBlock",
                            "text": "Window noon ended: SUCCESS",
                            "wrap": True,
                            "weight": "Bolder",
                            "size": "Medium",
                            "color": "Good",
                        },
                        {
                            "type": "FactSet",
                            "facts": [
                                {"title": "Opening", "value": "2026-11-28T12:00:00Z"},
                                {"title": "Installed", "value": "2"},
                                {"title": "Failed", "value": "0"},
                                {"title": "Pending reboot", "value": "1"},
                            ],
                        },
                        {
                            "type": "TextBlock",
                            "text": FOOTER,
                            "wrap": True,
                            "isSubtle": True,
                            "size": "Small",
                        },
                    ],
                },
            }
        ],
    }


HOSTILE = "**URGENT** [click here](https://evil.example/x) _now_ <at>Ada</at>\n- 1. # > `x`"
ESCAPED = (
    "\\*\\*URGENT\\*\\* \\[click here\\](https://evil.example/x) \\_now\\_ "
    "\\<at>Ada\\</at>\n\\- 1. # > \\`x\\`"
)


def test_teams_shows_text_from_machines_as_it_is_not_as_markdown() -> None:
    """Adaptive Card TextBlocks and facts render markdown: what a machine or a repository said
    is escaped, so it can neither format the card, nor hide behind a link, nor mention anyone."""
    hostile = occurrence(
        Kind.ROLLOUT_HALTED, rollout="web", cycle=1, stage="canary_1", reason="2 of 4 *failed*"
    )
    card = teams(message(hostile))["attachments"][0]["content"]["body"]
    assert card[0]["text"] == "Rollout web halted: 2 of 4 \\*failed\\*"
    facts = {f["title"]: f["value"] for f in card[1]["facts"]}
    assert (facts["Stage"], facts["Reason"]) == ("canary\\_1", "2 of 4 \\*failed\\*")
    said = occurrence(Kind.JOB_FINISHED, "web-1", operation="Install", status="failed",
                      output=HOSTILE)  # fmt: skip
    (output,) = [b for b in teams(message(said))["attachments"][0]["content"]["body"]
                 if b.get("fontType") == "Monospace"]  # fmt: skip
    assert output["text"] == ESCAPED
    numbered = teams(message(occurrence(Kind.ROLLOUT_HALTED, rollout="web", reason="x\n1. y")))
    facts = {
        f["title"]: f["value"] for f in numbered["attachments"][0]["content"]["body"][1]["facts"]
    }
    assert facts["Reason"] == "x\n1\\. y", "no numbered list"


def test_credentials_in_what_a_machine_said_are_masked() -> None:
    leaky = occurrence(
        Kind.ROLLOUT_HALTED, rollout="web", cycle=1, reason="https://bob:hunter2@git.example/x"
    )
    text = plain_text(message(leaky))
    assert "hunter2" not in text and "https://***@git.example/x" in text


def test_only_kinds_that_are_announced_can_be_chosen() -> None:
    assert parse_kinds("gate.blocked, rollout.halted") == {Kind.GATE_BLOCKED, Kind.ROLLOUT_HALTED}
    with pytest.raises(
        ValueError, match=r"^window\.started: not a kind that is announced; one of "
    ):
        parse_kinds("window.execution,window.started")
    with pytest.raises(ValueError, match=r"job\.dispatched: not a kind that is announced"):
        parse_kinds("job.dispatched")  # audited, never a transition: it would never be sent


# --- 2. Slack and Teams on loopback ------------------------------------------------------------


def bodies(receiver: Receiver) -> list[Any]:
    return [json.loads(request.body) for request in receiver.requests]


def test_slack_gets_the_chosen_kinds_and_a_503_is_retried(receiver: Receiver) -> None:
    receiver.failures = 2
    sink = SlackSink(receiver.url, retry=Retry(attempts=4, base=0.01, cap=0.05))
    sink(window_ended())
    sink(occurrence(Kind.JOB_FINISHED, "web-2", operation="Scan", status="succeeded"))  # no news
    sink(occurrence(Kind.COMPLIANCE_CHANGED, "web-1", status="COMPLIANT"))  # not chosen
    sink.close(10)
    assert (sink.sent, sink.failed, sink.retries, receiver.refused) == (1, 0, 2, 2)
    assert bodies(receiver) == [slack(message(window_ended()))]
    assert receiver.requests[0].headers["content-type"] == "application/json"


def test_teams_gets_the_card_and_other_kinds_when_asked(receiver: Receiver) -> None:
    sink = TeamsSink(receiver.url, kinds=parse_kinds("compliance.changed"), retry=FAST)
    changed = occurrence(Kind.COMPLIANCE_CHANGED, "web-1", status="COMPLIANT", previous=None)
    sink(changed)
    sink(window_ended())  # not chosen this time
    sink.close(10)
    [card] = bodies(receiver)
    assert card == teams(message(changed))
    title = card["attachments"][0]["content"]["body"][0]["text"]
    assert title == "compliance.changed web-1: unknown -> COMPLIANT (None)"


def test_a_receiver_that_keeps_failing_is_given_up_with_a_warning_and_no_secret(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.failures = 10
    url = receiver.url.replace("/hooks/patchwarden", SECRET_PATH)
    warnings = Warnings()
    sink = SlackSink(url, retry=FAST, log=warnings)
    with caplog.at_level(logging.DEBUG, logger="httpx"):
        sink(window_ended())
        sink.close(10)
    assert (sink.sent, sink.failed, sink.retries, receiver.refused) == (0, 1, 2, 3)
    [(said, fields)] = warnings.lines
    assert (said, fields["reason"], fields["types"]) == (
        "events not delivered",
        "HTTP 503",
        ["io.patchwarden.window.execution"],
    )
    assert sink.name == f"slack:http://127.0.0.1:{receiver.server.server_address[1]}/***"  # type: ignore[union-attr]
    assert fields["sink"] == sink.name
    # httpx logs each request's URL (shown with PATCHWARDEN_DEBUG): never this one.
    logged = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert len(logged) == 3 and all("XXXXsecretXXXX" not in line for line in logged)
    assert all(secret_url(url) in line for line in logged)


def test_a_dead_receiver_reason_names_no_secret() -> None:
    warnings = Warnings()
    url = f"http://127.0.0.1:{closed_port()}{SECRET_PATH}"
    sink = TeamsSink(url, retry=FAST, log=warnings)
    sink(window_ended())
    sink.close(10)
    assert sink.failed == 1
    assert "secret" not in repr(warnings.lines)
    assert "ConnectError" in warnings.lines[0][1]["reason"]


def test_a_slow_receiver_never_holds_up_the_loop(receiver: Receiver) -> None:
    receiver.gate.clear()  # the receiver answers nothing until the loop is done
    sink = SlackSink(receiver.url, capacity=5, retry=FAST, log=Warnings())
    sink(window_ended(installed=0))
    wait_until("the first notice on its way", lambda: sink.queued == 0, timeout=20)
    for n in range(1, 2001):
        sink(window_ended(installed=n))
    assert (sink.queued, sink.dropped) == (5, 1995)
    receiver.gate.set()
    sink.close(10)
    installed = [b["text"].split("*Installed:* ")[1].split("\n")[0] for b in bodies(receiver)]
    assert installed == ["0", "1996", "1997", "1998", "1999", "2000"]  # the newest kept


# --- 3. mail over SMTP (aiosmtpd) ------------------------------------------------------------


@dataclass
class Mailbox:
    """What the SMTP server accepted; ``refuse`` answers RCPT with that reply instead."""

    mails: list[tuple[Envelope, Mail]] = field(default_factory=list)
    refuse: list[str] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.refuse:
            return self.refuse.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.mails.append((envelope, message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth: Any
    ) -> AuthResult:
        assert isinstance(auth, LoginPassword)
        self.logins.append((auth.login.decode(), auth.password.decode()))
        return AuthResult(success=auth.password == b"s3cret", handled=False)


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = closed_port()
    server = Controller(box, hostname="127.0.0.1", port=port)
    server.start()
    yield box, port
    server.stop()


def test_mail_reaches_the_server_with_subject_body_and_headers(
    mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    smtp = Smtp("127.0.0.1", "patchwarden@example.invalid", port)
    sink = EmailSink(smtp, ["ops@example.invalid", "oncall@example.invalid"], retry=FAST)
    sink(machine_failed())
    sink.close(10)
    assert sink.sent == 1
    [(envelope, mail)] = box.mails
    assert envelope.mail_from == "patchwarden@example.invalid"
    assert envelope.rcpt_tos == ["ops@example.invalid", "oncall@example.invalid"]
    assert mail["Subject"] == "[patchwarden] Machine web-1 failed: Install in window noon"
    assert (mail["From"], mail["To"]) == (
        "patchwarden@example.invalid",
        "ops@example.invalid, oncall@example.invalid",
    )
    assert mail["Date"] == "Sat, 28 Nov 2026 12:00:00 +0000"
    assert mail["X-Patchwarden-Kind"] == "job.finished"
    assert mail["Message-ID"].endswith("@patchwarden>")
    assert mail.get_content_type() == "text/plain"
    assert mail.get_payload(decode=True).decode().replace("\r\n", "\n") == (
        "Machine web-1 failed: Install in window noon\n\n"
        "Machine: web-1\nOperation: Install\nWindow: noon\nError: INSTALL_FAILED\nJob: 17\n"
        "Duration: 42 s\n\nLast output:\n    Setting up pwtest-lib ...\n"
        "    dpkg: error processing package pwtest-lib\n\n"
        f"-- {FOOTER}\n"
    )


def test_mail_is_retried_after_a_4xx_and_given_up_after_a_5xx(
    mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    box.refuse = ["451 4.3.0 try again later", "550 5.1.1 no such user"]
    warnings = Warnings()
    smtp = Smtp("127.0.0.1", "patchwarden@example.invalid", port)
    sink = EmailSink(smtp, ["ops@example.invalid"], retry=FAST, log=warnings)
    sink(window_ended())
    sink.close(10)
    assert (sink.sent, sink.failed, sink.retries, box.mails) == (0, 1, 1, [])
    assert warnings.lines[0][1]["reason"] == "SMTP 550 5.1.1 no such user"


def _tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A certificate for 127.0.0.1 from a test CA: the server's context and a client's trusting
    that CA (as the system's CAs would be trusted)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.kubeapi import _Ca

    ca = _Ca.create()
    cert, key = ca.issue("127.0.0.1", server=True)
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=ca.cert.public_bytes(Encoding.PEM).decode())
    return server, client


def test_mail_over_starttls_with_a_login(tmp_path: Path) -> None:
    server_tls, client_tls = _tls(tmp_path)
    box = Mailbox()
    port = closed_port()
    server = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=box.authenticate,
        auth_require_tls=True,
    )
    server.start()
    try:
        good = Smtp(
            "127.0.0.1",
            "pw@example.invalid",
            port,
            starttls=True,
            login=("pw", "s3cret"),
            context=client_tls,
        )
        sink = EmailSink(good, ["ops@example.invalid"], retry=FAST)
        sink(window_ended())
        sink.close(10)
        assert sink.sent == 1 and len(box.mails) == 1
        warnings = Warnings()
        bad = Smtp(
            "127.0.0.1",
            "pw@example.invalid",
            port,
            starttls=True,
            login=("pw", "wrong"),
            context=client_tls,
        )
        refused = EmailSink(bad, ["ops@example.invalid"], retry=FAST, log=warnings)
        refused(window_ended())
        refused.close(10)
        # 535: a wrong password is not tried again.
        assert (refused.failed, refused.retries) == (1, 0)
        assert warnings.lines[0][1]["reason"].startswith("SMTP 535")
        # One connection: smtplib tries each mechanism offered (PLAIN, LOGIN), then gives up.
        assert box.logins[0] == ("pw", "s3cret")
        assert set(box.logins[1:]) == {("pw", "wrong")} and len(box.logins) <= 3
    finally:
        server.stop()


# --- 4. end to end -----------------------------------------------------------------------------


def noon_window(tmp_path: Path, apt_repo: Repo, name: str, installed: list[Pkg]) -> Path:
    """A directory source: one Debian root with ``installed``, window noon (daily, 12:00-16:00)."""
    roots = make_fleet(tmp_path / "fleet", apt_repo, [name], installed)
    config = tmp_path / "config"
    config.mkdir()
    (config / "fleet.yaml").write_text(
        documents(BASELINE_YAML, window_yaml("noon", "cron(0 12 * * ? *)"))
    )
    (config / "instances.yaml").write_text(local_instance_yaml(name, roots[name]))
    return config


@needs_apt
def test_a_reconcile_of_a_debian_root_tells_slack_the_window_started_and_ended(
    tmp_path: Path, apt_repo: Repo, receiver: Receiver
) -> None:
    config = noon_window(tmp_path, apt_repo, "web-1", BEFORE)
    revisions = []
    for now in ("2026-11-28T12:30:00Z", "2026-11-28T16:30:00Z"):  # in the window, then after
        run = patchctl(
            *("reconcile", "--source", str(config), *state_args(tmp_path), "--now", now),
            *("-o", "json", "--events-slack", "env:SLACK_URL"),
            SLACK_URL=receiver.url,
            PATCHWARDEN_TRUST_ROOT_SCRIPTS="1",
        )
        assert run.returncode == 0, run.stdout + run.stderr
        revisions.append(json.loads(run.stdout)["revision"])
    footer = f"\n_{short_revision(revisions[0])} · 2026-11-28T"  # a directory names no author
    texts = [b["text"] for b in bodies(receiver)]
    assert [t.split("\n_")[0] for t in texts] == [
        "*Window noon started*\n*Opening:* 2026-11-28T12:00:00Z",
        "*Window noon ended: SUCCESS*\n*Opening:* 2026-11-28T12:00:00Z\n*Installed:* 1\n"
        "*Failed:* 0\n*Pending reboot:* 0",
    ]
    assert all(footer in t for t in texts)


@needs_apt
def test_a_failed_install_on_a_debian_root_is_mailed_with_the_end_of_its_output(
    tmp_path: Path, apt_repo: Repo, mailbox: tuple[Mailbox, int], receiver: Receiver
) -> None:
    """pwtest-fail's postinst exits 1: the machine's failure, then the window's, are mailed
    once each, though the loop tries the install again in the pass (pwtest-lib went in, so the
    rescan leaves other pins): the second attempt is audited, neither mailed nor an event."""
    box, port = mailbox
    failing = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-fail")]
    config = noon_window(tmp_path, apt_repo, "db-1", failing)
    audit = tmp_path / "audit.jsonl"
    run = patchctl(
        *("reconcile", "--source", str(config), *state_args(tmp_path)),
        *("--now", "2026-11-28T12:30:00Z", "--events-email", "ops@example.invalid"),
        *("--events-smtp", f"127.0.0.1:{port}", "--events-smtp-from", "pw@example.invalid"),
        *("--events-webhook", receiver.url, "--audit-log", str(audit)),
        PATCHWARDEN_TRUST_ROOT_SCRIPTS="1",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    subjects = [mail["Subject"] for _, mail in box.mails]
    assert subjects == [
        "[patchwarden] Window noon started",
        "[patchwarden] Machine db-1 failed: Install in window noon",
        "[patchwarden] Window noon ended: FAILED",
    ]
    failed = box.mails[1][1].get_payload(decode=True).decode()
    assert "Last output:\n" in failed.replace("\r\n", "\n")
    said = "    pwtest-fail 1.0-2: dpkg: error processing package pwtest-fail (--configure)"
    assert said in failed
    assert re.search(r" · 2026-11-28T12:30:\d\dZ\r?\n$", failed)  # to the second
    ended = box.mails[2][1].get_payload(decode=True).decode().replace("\r\n", "\n")
    assert "Installed: 0\nFailed: 1\nPending reboot: 0\n" in ended
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    attempts = [
        line
        for line in lines
        if line["kind"] == "job.finished" and line["detail"]["status"] == "failed"
    ]
    assert len(attempts) == 2, "every attempt is audited"
    assert attempts[1]["detail"]["retryOf"] == attempts[0]["job"]
    events = [body["type"] for body in bodies(receiver)]
    assert events.count("io.patchwarden.job.failed") == 1, events


@needs_apt
def test_a_hostile_package_output_reaches_teams_escaped(tmp_path: Path, receiver: Receiver) -> None:
    """A package whose version has two tildes (as backports' do: ``1.2~bpo12+1``) and whose
    postinst fails: Teams gets dpkg's words as they are, the tildes escaped rather than read as
    strikethrough. (The agent forwards dpkg's error lines, not the script's own output.)"""
    evil = "echo '**URGENT** [click](https://evil.example/x)' >&2; exit 1"
    repo = Repo(tmp_path / "repo")
    repo.add("stable", Pkg("pwtest-evil", "1.0-1"), origin="Debian", codename="bookworm")
    repo.add(
        "stable-security",
        Pkg("pwtest-evil", "1.0-2~rc1~b2", scripts={"postinst": evil}),
        origin="Debian",
        label="Debian-Security",
        codename="bookworm-security",
    )
    config = noon_window(tmp_path, repo.publish(), "db-1", [Pkg("pwtest-evil", "1.0-1")])
    run = patchctl(
        *("reconcile", "--source", str(config), *state_args(tmp_path)),
        *("--now", "2026-11-28T12:30:00Z", "--events-teams", "env:TEAMS_URL"),
        *("--events-teams-kinds", "job.finished"),
        TEAMS_URL=receiver.url,
        PATCHWARDEN_TRUST_ROOT_SCRIPTS="1",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (card,) = [b["attachments"][0]["content"]["body"] for b in bodies(receiver)]
    (output,) = [block["text"] for block in card if block.get("fontType") == "Monospace"]
    assert output.startswith("pwtest-evil 1.0-2\\~rc1\\~b2: dpkg: error processing package")
    assert "**" not in json.dumps(card), "nothing the package said is bold"
    assert card[0]["text"] == "Machine db-1 failed: Install in window noon"


def state_args(tmp_path: Path) -> list[str]:
    return ["--state", str(tmp_path / "state.db")]


def patchctl(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PATCHCTL, *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_patchctl_refuses_bad_chat_options(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    reconcile = ("reconcile", "--source", str(tmp_path / "config"), *state_args(tmp_path))

    given = patchctl(*reconcile, "--events-slack", "https://hooks.slack.com" + SECRET_PATH)
    assert given.returncode == 2
    assert "'https://hooks.slack.com/***' is not env:NAME or file:PATH" not in given.stderr
    assert "https://hooks.slack.com/*** is not env:NAME or file:PATH" in given.stderr
    assert "secret" not in given.stderr.replace("a secret is read", "")
    unknown = patchctl(
        *reconcile, "--events-slack", "env:SLACK", "--events-slack-kinds", "window.started"
    )
    assert unknown.returncode == 2
    assert "window.started: not a kind that is announced; one of " in unknown.stderr
    cases = {
        ("--events-teams-kinds", "gate.blocked"): "--events-teams-kinds needs --events-teams",
        ("--events-slack", "env:NO_SUCH_VARIABLE"): (
            "--events-slack env:NO_SUCH_VARIABLE: the environment has no NO_SUCH_VARIABLE (or it is empty)"
        ),
        ("--events-teams", f"file:{tmp_path}/none"): f"--events-teams file:{tmp_path}/none: "
        "cannot read it: No such file or directory",
        ("--events-email", "ops@example.invalid"): "--events-email needs --events-smtp HOST[:PORT]",
        ("--events-email", "a@example.invalid", "--events-smtp", "mail.example.invalid"): (
            "--events-email needs --events-smtp-from ADDRESS (the notices' sender)"
        ),
        (
            *("--events-email", "a@example.invalid", "--events-smtp", "mail.example.invalid:587"),
            *("--events-smtp-from", "pw@example.invalid", "--events-smtp-login", "env:LOGIN"),
        ): "--events-smtp-login needs --events-smtp-starttls: a password is never sent in the "
        "clear to mail.example.invalid",
        ("--events-slack", "env:NOT_A_URL"): "--events-slack env:NOT_A_URL: holds ***, not an "
        "http:// or https:// URL",
    }
    for argv, said in cases.items():
        run = patchctl(*reconcile, *argv, LOGIN="pw:s3cret", NOT_A_URL="hooks.slack.com/services/x")
        assert (run.returncode, run.stderr) == (1, f"patchctl: {said}\n"), argv

"""bench/gateway.py's own parts, cheaply: its command line, its HTTP client, the forwarder.

The benchmark itself is not run here (a run takes tens of seconds and installs
LiteLLM): these tests check that what it is built from does what it says, over
real loopback HTTP against the fake provider process. Nothing is timed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.fake_provider.conftest import API_KEY, FakeProcess, fake_command, launch

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench() -> Iterator[tuple[ModuleType, ModuleType]]:
    """bench/gateway.py and bench/_forwarder.py, imported as the scripts see each other."""
    sys.path.insert(0, str(BENCH))
    try:
        import _forwarder
        import gateway

        yield gateway, _forwarder
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeProcess]:
    """The fake provider, as its own process on loopback (as the benchmark starts it)."""
    process = launch(fake_command("--api-key", API_KEY), tmp_path / "fake.log")
    yield process
    process.stop()


def test_quick_defaults_and_direct_always_measured(bench: tuple[ModuleType, ModuleType]) -> None:
    gateway, _ = bench
    args = gateway.parse_args(
        ["--quick", "--targets", "llmsession,forwarder", "--stores", "memory"]
    )
    assert args.targets == "direct,forwarder,llmsession"
    assert (args.repeat, args.duration, args.warmup, args.latency_requests) == (1, 1.5, 0.5, 20)
    full = gateway.parse_args([])
    assert full.targets == "direct,forwarder,llmsession,litellm"
    assert full.stores == "sqlite,postgresql"
    assert (full.repeat, full.duration, full.latency_requests, full.concurrency) == (
        3,
        4.0,
        100,
        32,
    )
    # An explicit flag wins over --quick's default.
    assert gateway.parse_args(["--quick", "--duration", "0.5"]).duration == 0.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--targets", "direct,nginx"], "--targets: unknown nginx"),
        (["--stores", "sqlite,mysql"], "--stores: mysql"),
        (["--stores", "sqlite,sqlite"], "--stores: none or repeated"),
        (["--repeat", "0"], "--repeat must be 1 to 20"),
        (["--duration", "0"], "--duration must be over 0"),
        (["--concurrency", "2000"], "--concurrency must be 1 to 1024"),
        (["--rounds", "0"], "--rounds must be 1 to 64"),
    ],
)
def test_bad_arguments_name_the_flag(
    bench: tuple[ModuleType, ModuleType],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    gateway, _ = bench
    with pytest.raises(SystemExit) as exit_info:
        gateway.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_script_sends_the_whole_conversation_or_only_the_new_turn(
    bench: tuple[ModuleType, ModuleType],
) -> None:
    gateway, _ = bench
    script = gateway.Script.build(["A1", "A2", "A3"])
    full = [json.loads(body) for body in script.full[0]]
    new = [json.loads(body) for body in script.new[1]]
    assert [m["role"] for m in full[2]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert [m["content"] for m in full[2]["messages"] if m["role"] == "assistant"] == ["A1", "A2"]
    assert [m["role"] for m in new[0]["messages"]] == ["system", "user"]
    assert new[2]["messages"] == [full[2]["messages"][-1]]
    assert new[2]["stream_options"] == {"include_usage": True}
    assert "stream" not in full[0]
    assert gateway.Script.from_json(script.as_json()) == script


def test_anthropic_script_and_arguments(bench: tuple[ModuleType, ModuleType]) -> None:
    gateway, _ = bench
    args = gateway.parse_args(["--kind", "anthropic"])
    assert args.targets == "direct,forwarder,llmsession,litellm"
    script = gateway.Script.build(["A1", "A2"], "anthropic")
    full = json.loads(script.full[1][1])
    new = [json.loads(body) for body in script.new[0]]
    assert full["system"] == gateway.SYSTEM
    assert full["stream"] is True
    assert [m["role"] for m in full["messages"]] == ["user", "assistant", "user"]
    assert new[0]["system"] == gateway.SYSTEM
    assert "system" not in new[1]
    assert new[1]["messages"] == [full["messages"][-1]]


def test_gemini_script_and_arguments(bench: tuple[ModuleType, ModuleType]) -> None:
    gateway, _ = bench
    assert gateway.parse_args(["--kind", "gemini"]).targets == "direct,forwarder,llmsession,litellm"
    script = gateway.Script.build(["A1", "A2"], "gemini")
    full = json.loads(script.full[1][1])
    assert [c["role"] for c in full["contents"]] == ["user", "model", "user"]
    assert full["systemInstruction"] == {"parts": [{"text": gateway.SYSTEM}]}
    new = json.loads(script.new[0][1])
    assert new["contents"] == [full["contents"][-1]]


def test_kind_all_and_how_to_run_it_in_help(
    bench: tuple[ModuleType, ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, _ = bench
    assert gateway.parse_args(["--kind", "all"]).kind == "all"
    with pytest.raises(SystemExit):
        gateway.parse_args(["--help"])
    assert "bench/gateway.py --kind all" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gateway.parse_args(["--kind", "cohere"])
    assert "--kind: invalid choice: 'cohere'" in capsys.readouterr().err


def test_litellm_reaches_the_fake_in_each_kinds_own_format(
    bench: tuple[ModuleType, ModuleType],
) -> None:
    gateway, _ = bench
    models = {
        kind: gateway.litellm_model(kind, "http://127.0.0.1:9")["litellm_params"]
        for kind in gateway.KINDS
    }
    # The provider prefix picks LiteLLM's upstream API: never a translation to another one.
    assert models["openai"]["model"] == "openai/gpt-4o-mini"
    assert models["anthropic"]["model"] == f"anthropic/{gateway.ANTHROPIC_MODEL}"
    assert models["anthropic"]["api_base"] == "http://127.0.0.1:9"
    assert models["gemini"]["api_base"] == "http://127.0.0.1:9/v1beta"


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
def test_answer_text_reads_bodies_and_streams_alike(
    bench: tuple[ModuleType, ModuleType], fake: FakeProcess, kind: str
) -> None:
    gateway, _ = bench
    target = gateway.Target("t", 0, f"Bearer {API_KEY}", False, kind)
    script = gateway.Script.build(["A1"], kind)
    texts = []
    for stream in (False, True):
        answer = httpx.post(
            fake.root + gateway._path(kind, stream),
            content=script.full[int(stream)][0],
            headers=gateway._headers(target),
            trust_env=False,
        )
        assert answer.status_code == 200, answer.text
        texts.append(gateway.answer_text(kind, stream, answer.content))
    assert texts[0] == texts[1]
    assert texts[0].startswith("You said : Question 1 : what is the name")


def test_check_targets_refuses_a_target_whose_work_the_fake_did_not_see(
    bench: tuple[ModuleType, ModuleType], fake: FakeProcess, tmp_path: Path
) -> None:
    gateway, _ = bench
    args = gateway.parse_args(["--quick", "--kind", "anthropic", "--rounds", "2"])
    with ExitStack() as stack:
        run = gateway.Bench(args, tmp_path, stack)
        run.start_fake()
        script = gateway.Script.build(run.answers(), "anthropic")
        run.start_forwarder()
        run.check_targets(script)
        # Another provider answers as well, but the fake never sees the request.
        elsewhere = gateway.Target(
            "elsewhere", int(fake.root.rsplit(":", 1)[1]), f"Bearer {API_KEY}", False, "anthropic"
        )
        run.servers.append(gateway.Server(elsewhere, None))
        with pytest.raises(RuntimeError, match=r"elsewhere \(body\): the fake logged 0 requests"):
            run.check_targets(script)


def _client_run(
    gateway: ModuleType, port: int, stream: bool, turns: int, kind: str = "openai"
) -> list[Any]:
    async def run() -> list[Any]:
        target = gateway.Target("t", port, f"Bearer {API_KEY}", False, kind)
        script = gateway.Script.build(["You said : hi"] * 3, kind)
        client = gateway._Client(target, script, stream)
        try:
            return [await client.request() for _ in range(turns)]
        finally:
            await client.close()

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("stream", [False, True])
def test_load_client_reads_bodies_and_streams_on_one_connection(
    bench: tuple[ModuleType, ModuleType], fake: FakeProcess, stream: bool, kind: str
) -> None:
    gateway, _ = bench
    port = int(fake.root.rsplit(":", 1)[1])
    results = _client_run(gateway, port, stream, turns=4, kind=kind)
    assert [error for _, _, error in results] == [None] * 4
    assert all(0 < first <= whole for first, whole, _ in results)
    entries = fake.billing()
    assert len(entries) == 4
    # Turn 1, 2, 3 of a conversation, then turn 1 of the next: the history grows, then restarts.
    sizes = [entry["input_tokens"] for entry in entries]
    assert sizes[0] < sizes[1] < sizes[2]
    assert sizes[3] == sizes[0]


def test_load_client_reports_a_refused_request(
    bench: tuple[ModuleType, ModuleType], fake: FakeProcess
) -> None:
    gateway, _ = bench

    async def run() -> Any:
        target = gateway.Target("t", int(fake.root.rsplit(":", 1)[1]), "Bearer wrong", False)
        client = gateway._Client(target, gateway.Script.build(["x"]), False)
        try:
            return await client.request()
        finally:
            await client.close()

    _, _, error = asyncio.run(run())
    assert error.startswith("401 ")


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
@pytest.mark.parametrize("stream", [False, True])
async def test_forwarder_passes_body_status_and_stream_through(
    bench: tuple[ModuleType, ModuleType], fake: FakeProcess, stream: bool, client: str
) -> None:
    _, forwarder = bench
    app = forwarder.create_app(fake.root, client=client)
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": stream,
    }
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://fwd") as http,
    ):
        answer = await http.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
        )
        refused = await http.post(
            "/v1/chat/completions", json=body, headers={"Authorization": "Bearer wrong"}
        )
        health = await http.get("/healthz")
    assert answer.status_code == 200
    if stream:
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.text.rstrip().endswith("data: [DONE]")
        assert "You said : hello there" in "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in answer.text.splitlines()
            if line.startswith("data: {")
        )
    else:
        assert answer.json()["choices"][0]["message"]["content"] == "You said : hello there"
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert health.text == "ok"
    assert len(fake.billing()) == 1


async def test_forwarder_passes_gemini_keys_and_queries_on(
    bench: tuple[ModuleType, ModuleType], fake: FakeProcess
) -> None:
    _, forwarder = bench
    app = forwarder.create_app(fake.root)
    body = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://fwd") as http,
    ):
        answer = await http.post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            json=body,
            headers={"x-goog-api-key": API_KEY},
        )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert '"finishReason":"STOP"' in answer.text


def test_litellm_install_never_replaces_a_directory_it_did_not_make(
    bench: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    gateway, _ = bench
    (tmp_path / "keep.txt").write_text("someone's file")
    with pytest.raises(RuntimeError, match="was not made by this benchmark"):
        gateway.ensure_litellm(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "someone's file"

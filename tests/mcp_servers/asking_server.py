"""A real MCP server that asks its client things during a tool call, for the proxy's relay tests.

Tool ``ask``: while it runs, it sends the client ``sampling/createMessage``, ``roots/list`` and a form-mode
``elicitation/create`` (each on the call's own stream), then answers with what the client answered (or the error
it got, as ``<method> error: <message>``). A ``notifications/roots/list_changed`` from the client is written to
``$MCP_TEST_CALLS_FILE`` as ``roots_list_changed``. It also serves one resource (paginated listing) and one prompt,
for what the proxy passes through without governing.

Run: ``python -m tests.mcp_servers.asking_server stdio`` or ``... http PORT``.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata

CALLS_FILE = os.environ.get("MCP_TEST_CALLS_FILE", "")
_OBJECT = {"type": "object", "properties": {"prompt": {"type": "string"}}}
_FORM = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}


def _record(line: str) -> None:
    if CALLS_FILE:
        with open(CALLS_FILE, "a") as out:
            out.write(line + "\n")


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[types.Tool(name="ask", description="Asks the client.", input_schema=_OBJECT)])


async def _ask(ctx: Any, request: Any, result_type: Any) -> Any:
    metadata = ServerMessageMetadata(related_request_id=ctx.request_id)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return await ctx.session.send_request(request, result_type, metadata=metadata)
    except MCPError as exc:
        return f"{request.method} error: {exc.error.message}"


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    prompt = str((params.arguments or {}).get("prompt", ""))
    _record(f"{params.name} {prompt}")
    sampling = types.CreateMessageRequestParams(
        messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
        max_tokens=16,
        _meta={"test/marker": "kept"},
    )
    sampled = await _ask(ctx, types.CreateMessageRequest(params=sampling), types.CreateMessageResult)
    roots = await _ask(ctx, types.ListRootsRequest(), types.ListRootsResult)
    form = types.ElicitRequestFormParams(message="Which colour?", requested_schema=_FORM)
    elicited = await _ask(ctx, types.ElicitRequest(params=form), types.ElicitResult)
    answers: dict[str, Any] = {
        "sampling": sampled
        if isinstance(sampled, str)
        else sampled.model_dump(mode="json", by_alias=True, exclude_none=True),
        "roots": roots if isinstance(roots, str) else [str(r.uri) for r in roots.roots],
        "elicitation": elicited
        if isinstance(elicited, str)
        else elicited.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return types.CallToolResult(content=[types.TextContent(type="text", text="asked")], structured_content=answers)


async def list_resources(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    if params is not None and params.cursor == "page-2":
        return types.ListResourcesResult(resources=[types.Resource(uri="test://records/r2", name="r2")])
    resources = [types.Resource(uri="test://records/r1", name="r1")]
    return types.ListResourcesResult(resources=resources, next_cursor="page-2")


async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    text = types.TextResourceContents(uri=str(params.uri), text=f"contents of {params.uri}")
    return types.ReadResourceResult(contents=[text])


async def list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=[types.Prompt(name="greet")])


async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    text = f"hello {(params.arguments or {}).get('who', '')}"
    message = types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))
    return types.GetPromptResult(messages=[message])


async def roots_list_changed(ctx: Any, params: Any) -> None:
    _record("roots_list_changed")


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # roots is deprecated as of 2026-07-28; this server speaks 2025-11-25
    server = Server(
        "test-asking",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_roots_list_changed=roots_list_changed,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
    )


async def _stdio() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main() -> None:
    if sys.argv[1] == "stdio":
        anyio.run(_stdio)
    else:
        uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")


if __name__ == "__main__":
    main()

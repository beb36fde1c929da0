"""Function calling through LangChain's `ChatOpenAI`, unchanged, against a running server.

Usage: python langchain_tools_check.py BASE_URL [--responses]
  BASE_URL     e.g. http://127.0.0.1:8080/v1 (a server with no API key; `swarm serve --model
               smollm2` for the numbers in docs/openai-compatibility.md)
  --responses  the same through the Responses API (`ChatOpenAI(use_responses_api=True)`)

Needs `pip install langchain-openai` (not part of CI). Binds a tool the way agent code does
(`bind_tools`, a Python function with a docstring), asks for a call (`tool_choice="any"`,
LangChain's name for `required`), then runs the same request streamed and merges the chunks
as LangChain does, and sends the result back in a ToolMessage. Prints what it got; exits 1
if a step does not hold.
"""

import sys

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return "18 C and sunny"


llm = ChatOpenAI(base_url=sys.argv[1], api_key="unused", model="swarm", temperature=0,
                 max_tokens=64, use_responses_api="--responses" in sys.argv[2:])
bound = llm.bind_tools([get_weather], tool_choice="any", parallel_tool_calls=False)
question = [HumanMessage("What is the weather in Paris?")]

answer = bound.invoke(question)
print("invoke:", answer.tool_calls)
assert answer.tool_calls and answer.tool_calls[0]["name"] == "get_weather", answer
assert isinstance(answer.tool_calls[0]["args"]["city"], str), answer

merged = None
for chunk in bound.stream(question):
    merged = chunk if merged is None else merged + chunk
print("stream:", merged.tool_calls)
assert [(c["name"], c["args"]) for c in merged.tool_calls] == \
    [(c["name"], c["args"]) for c in answer.tool_calls], (merged.tool_calls, answer.tool_calls)

result = get_weather.invoke(answer.tool_calls[0]["args"])
follow = llm.bind_tools([get_weather]).invoke(
    question + [answer, ToolMessage(result, tool_call_id=answer.tool_calls[0]["id"])])
print("after the result:", repr(follow.content), follow.tool_calls)
assert follow.content or follow.tool_calls, follow
print("ok")

"""An agent of the OpenAI Agents SDK, unchanged, against a running server.

Usage: python agents_sdk_check.py BASE_URL
  BASE_URL  e.g. http://127.0.0.1:8080/v1 (a server with no API key; `swarm serve --model
            smollm2` for the numbers in docs/openai-compatibility.md)

Needs `pip install openai-agents` (not part of CI). The same agent runs twice over: with
the SDK's default model class, which speaks the Responses API (`OpenAIResponsesModel`), and
with `OpenAIChatCompletionsModel`, which speaks Chat Completions. The agent has one Python function
as a tool and must call it on its first turn (`tool_choice="required"`, reset after the call
so that the next turn may answer); the SDK runs the tool, sends its result back and takes the
model's next turn as the final output. Run once plainly and once streamed. Prints what it got;
exits 1 if a step does not hold.
"""

import asyncio
import sys

from agents import (Agent, ModelSettings, OpenAIChatCompletionsModel, OpenAIResponsesModel,
                    Runner, function_tool, set_tracing_disabled)
from openai import AsyncOpenAI

set_tracing_disabled(True)  # no traces uploaded to OpenAI
calls = []


@function_tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    calls.append(city)
    return "18 C and sunny"


client = AsyncOpenAI(base_url=sys.argv[1], api_key="unused")
QUESTION = "What is the weather in Paris?"


def weather_agent(model):
    return Agent(
        name="weather", instructions="Answer with the tool.", tools=[get_weather], model=model,
        model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False,
                                     temperature=0, max_tokens=64),
        reset_tool_choice=True)


async def check(label, agent):
    calls.clear()
    result = await Runner.run(agent, QUESTION, max_turns=3)
    print(f"{label} run: tool called with", calls, "final output",
          repr(result.final_output)[:120])
    assert len(calls) == 1 and isinstance(calls[0], str) and calls[0], calls
    assert isinstance(result.final_output, str), result

    calls.clear()
    streamed = Runner.run_streamed(agent, QUESTION, max_turns=3)
    items = []
    async for event in streamed.stream_events():
        if event.type == "run_item_stream_event":
            items.append(event.item.type)
    print(f"{label} streamed: tool called with", calls, "items", items)
    assert len(calls) == 1 and calls[0], calls
    assert "tool_call_item" in items and "tool_call_output_item" in items, items
    assert isinstance(streamed.final_output, str), streamed


async def main():
    await check("responses", weather_agent(OpenAIResponsesModel(model="swarm",
                                                                openai_client=client)))
    await check("chat", weather_agent(OpenAIChatCompletionsModel(model="swarm",
                                                                 openai_client=client)))
    print("ok")


asyncio.run(main())

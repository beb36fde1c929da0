"""The server against the official `openai` Python client.

Usage: python openai_client_test.py BASE_URL KEYED_URL TINY_QUEUE_URL
  BASE_URL        a server with no API key (e.g. http://127.0.0.1:8080/v1)
  KEYED_URL       the same engine behind the API key `sk-test`
  TINY_QUEUE_URL  the same engine with a queue of one request

Prints one line per check and ends with "N passed, M failed"; exits 1 on any failure.
"""

import json
import sys
import threading
import time
import traceback
import urllib.request

import openai

BASE, KEYED, TINY = sys.argv[1:4]
client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0, timeout=120)
results = []


def check(fn):
    try:
        fn()
        results.append((fn.__name__, None))
        print(f"ok   {fn.__name__}", flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        results.append((fn.__name__, e))
        print(f"FAIL {fn.__name__}: {e!r}", flush=True)
        traceback.print_exc()
    return fn


def metrics():
    root = BASE.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(root + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


ELITES = [m.id for m in client.models.list().data]
ELITE = ELITES[-1]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@check
def list_models():
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "swarm", ids
    m = client.models.list().data[-1]
    assert m.object == "model" and m.owned_by, m


@check
def chat_greedy_says_paris():
    raw = client.chat.completions.with_raw_response.create(
        model="swarm", messages=QUESTION, max_tokens=16, temperature=0)
    r = raw.parse()
    assert raw.headers["x-swarm-elite"] == ELITE, raw.headers
    assert r.model == ELITE, r.model
    assert "Paris" in r.choices[0].message.content, r.choices[0].message.content
    u = r.usage
    assert u.prompt_tokens > 5 and u.completion_tokens > 0, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    assert r.choices[0].finish_reason in ("stop", "length")


@check
def completions():
    r = client.completions.create(model=ELITE, prompt="The capital of France is",
                                  max_tokens=6, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text, r
    assert r.usage.completion_tokens <= 6, r.usage


@check
def a_list_of_prompts_answers_each_as_alone():
    prompts = ["The capital of France is", "def add(a, b):", "SELECT name FROM"]
    r = client.completions.create(model=ELITE, prompt=prompts, max_tokens=8, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2], r.choices
    alone = [client.completions.create(model=ELITE, prompt=p, max_tokens=8, temperature=0)
             for p in prompts]
    assert [c.text for c in r.choices] == [a.choices[0].text for a in alone], (r, alone)
    assert r.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone), r.usage


@check
def streaming_with_usage_matches_plain():
    plain = client.chat.completions.create(model="swarm", messages=QUESTION, max_tokens=12,
                                           temperature=0).choices[0].message.content
    chunks = list(client.chat.completions.create(
        model="swarm", messages=QUESTION, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain, (text, plain)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, last
    assert last.usage.completion_tokens > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1, finishes


@check
def completion_stream():
    chunks = list(client.completions.create(model="swarm", prompt="Once upon a time",
                                            max_tokens=5, stream=True, seed=1))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


@check
def logprobs_of_a_greedy_answer():
    # Greedy: every token is the most likely one, so it heads its own alternatives; the
    # tokens' bytes make the answer (a token may hold part of a character).
    r = client.chat.completions.create(model="swarm", messages=QUESTION, max_tokens=12,
                                       temperature=0, logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens - (choice.finish_reason == "stop"), r
    assert bytes(b for t in content for b in t.bytes).decode() == choice.message.content, r
    for t in content:
        assert len(t.top_logprobs) == 3, t
        assert t.top_logprobs[0].token == t.token, t
        assert t.top_logprobs[0].logprob == t.logprob <= 0, t
        assert [a.logprob for a in t.top_logprobs] == sorted(
            (a.logprob for a in t.top_logprobs), reverse=True), t

    c = client.completions.create(model=ELITE, prompt="The capital of France is",
                                  max_tokens=6, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert "".join(lp.tokens) == c.choices[0].text, c
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs), lp
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset), lp
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert max(top.values()) == top[token] == logprob, (token, logprob, top)

    streamed = client.chat.completions.create(model="swarm", messages=QUESTION,
                                              max_tokens=12, temperature=0, logprobs=True,
                                              stream=True)
    tokens = [t for ch in streamed if ch.choices and ch.choices[0].logprobs
              for t in ch.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in tokens] == [(t.token, t.logprob) for t in content]


@check
def echo_scores_the_prompt():
    # 300 token ids: longer than the 256 positions the engine scores an echoed prompt in.
    ids = [100 + (i * 37) % 20000 for i in range(300)]
    r = client.completions.create(model=ELITE, prompt=ids, max_tokens=0, echo=True,
                                  logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    assert r.usage.completion_tokens == 0 and len(lp.tokens) == 300, r.usage
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp.token_logprobs[:2]
    assert "".join(lp.tokens) == r.choices[0].text, r.choices[0].text[:80]
    # Token k after the k before it scores what generating it after them reports (forced
    # with logit_bias: the log-probability reported is the model's own, before the bias),
    # in the first chunk and in the second.
    for k in (5, 280):
        g = client.completions.create(model=ELITE, prompt=ids[:k], max_tokens=1,
                                      temperature=0, logprobs=0,
                                      logit_bias={str(ids[k]): 100})
        generated = g.choices[0].logprobs
        assert generated.tokens[0] == lp.tokens[k], (generated.tokens, lp.tokens[k])
        assert abs(generated.token_logprobs[0] - lp.token_logprobs[k]) < 2e-3, (
            k, generated.token_logprobs[0], lp.token_logprobs[k])


@check
def json_mode_answers_one_object():
    ask = [{"role": "user", "content": "Reply with a JSON object with keys name and age "
            "for a person called Ann, 31."}]
    for temperature, seed in [(0, None), (1.0, 1), (1.0, 2)]:
        r = client.chat.completions.create(model="swarm", messages=ask, max_tokens=96,
                                           temperature=temperature, seed=seed,
                                           response_format={"type": "json_object"})
        choice = r.choices[0]
        # The seeds are fixed; each of these answers closes its object well within
        # max_tokens (an answer cut by max_tokens would be a JSON prefix, finish "length").
        assert choice.finish_reason == "stop", choice
        answer = json.loads(choice.message.content)
        assert isinstance(answer, dict) and "name" in answer, answer
    # Streamed, the same greedy answer arrives in pieces.
    chunks = client.chat.completions.create(model="swarm", messages=ask, max_tokens=96,
                                            temperature=0, stream=True,
                                            response_format={"type": "json_object"})
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    greedy = client.chat.completions.create(model="swarm", messages=ask, max_tokens=96,
                                            temperature=0,
                                            response_format={"type": "json_object"})
    assert streamed == greedy.choices[0].message.content, (streamed, greedy)


@check
def json_schema_answers_fit_the_schema():
    # What `client.beta.chat.completions.parse(response_format=Person)` sends for a
    # Pydantic model: a strict JSON schema.
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                             "city": {"enum": ["Paris", "London", "Rome"]}}}
    ask = [{"role": "user", "content": "Ann is 31 and lives in Paris. Reply with her as JSON."}]
    for temperature, seed in [(0, None), (1.0, 1)]:
        r = client.chat.completions.create(
            model="swarm", messages=ask, max_tokens=96, temperature=temperature, seed=seed,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "Person", "strict": True, "schema": schema}})
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice
        person = json.loads(choice.message.content)
        assert list(person) == ["name", "age", "city"], person
        assert isinstance(person["name"], str) and isinstance(person["age"], int), person
        assert person["city"] in ("Paris", "London", "Rome"), person


WEATHER_TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city", "strict": True,
        "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                       "properties": {"city": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now"}},
]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def assert_calls(message, names, cut=False):
    """Every call is of a listed function with arguments of its schema; with `cut` (the
    answer ran out of tokens) the last call's arguments may be unfinished."""
    assert message.tool_calls, message
    for k, call in enumerate(message.tool_calls):
        assert call.type == "function" and call.id.startswith("call_"), call
        assert call.function.name in names, call
        if cut and k == len(message.tool_calls) - 1:
            assert call.function.arguments.startswith("{"), call
            continue
        arguments = json.loads(call.function.arguments)
        if call.function.name == "get_weather":
            assert list(arguments) == ["city"] and isinstance(arguments["city"], str), arguments
        else:
            assert arguments == {}, arguments


@check
def tool_choice_required_calls_a_listed_function():
    for temperature, seed in [(0, None), (1.0, 1), (1.0, 2)]:
        r = client.chat.completions.create(model="swarm", messages=WEATHER_QUESTION,
                                           tools=WEATHER_TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=96,
                                           temperature=temperature, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert_calls(choice.message, {"get_weather", "get_time"})
        assert len(choice.message.tool_calls) == 1, choice
    # Parallel calls (the default): SmolLM2 was not trained to stop calling, and greedy, it
    # calls until max_tokens; each call it finished is read out whole.
    r = client.chat.completions.create(model="swarm", messages=WEATHER_QUESTION,
                                       tools=WEATHER_TOOLS, tool_choice="required",
                                       max_tokens=96, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason in ("tool_calls", "length"), choice
    assert len(choice.message.tool_calls) >= 2, choice
    assert_calls(choice.message, {"get_weather", "get_time"}, cut=choice.finish_reason == "length")
    # A named function is the one called.
    r = client.chat.completions.create(
        model="swarm", messages=WEATHER_QUESTION, tools=WEATHER_TOOLS, max_tokens=96,
        temperature=0, tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert [c.function.name for c in choice.message.tool_calls] == ["get_time"], choice
    assert choice.message.content is None, choice


@check
def non_strict_parameters_are_guided_too():
    # Without `strict`, properties outside `required` are optional: the arguments hold the
    # required one and at most the others, nothing else.
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": {"type": "object", "required": ["city"], "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}]
    for temperature, seed in [(0, None), (1.0, 1)]:
        r = client.chat.completions.create(model="swarm", messages=WEATHER_QUESTION, tools=tools,
                                           tool_choice="required", parallel_tool_calls=False,
                                           max_tokens=64, temperature=temperature, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        arguments = json.loads(choice.message.tool_calls[0].function.arguments)
        assert isinstance(arguments["city"], str), arguments
        assert set(arguments) <= {"city", "unit"}, arguments
        assert arguments.get("unit", "celsius") in ("celsius", "fahrenheit"), arguments


@check
def legacy_functions_answer_with_function_call():
    r = client.chat.completions.create(
        model="swarm", messages=WEATHER_QUESTION, max_tokens=64, temperature=0,
        functions=[t["function"] for t in WEATHER_TOOLS], function_call={"name": "get_weather"})
    choice = r.choices[0]
    assert choice.finish_reason == "function_call", choice
    assert choice.message.function_call.name == "get_weather", choice
    assert isinstance(json.loads(choice.message.function_call.arguments)["city"], str), choice
    assert not choice.message.tool_calls, choice


@check
def pydantic_tools_parse():
    # `openai.pydantic_function_tool` and `.parse()`: the SDK's own strict schema, and its
    # own parsing of the arguments into the model.
    import pydantic

    class GetWeather(pydantic.BaseModel):
        city: str

    r = client.chat.completions.parse(model="swarm", messages=WEATHER_QUESTION, max_tokens=96,
                                      temperature=0, tool_choice="required",
                                      parallel_tool_calls=False,
                                      tools=[openai.pydantic_function_tool(GetWeather)])
    call = r.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, GetWeather), call


@check
def stream_helper_sees_arguments_grow():
    # The SDK's stream helper: `tool_calls.function.arguments.delta` events as the arguments
    # are written, then `.done` with them parsed into the pydantic model.
    import pydantic

    class GetWeather(pydantic.BaseModel):
        city: str

    stream = getattr(client.chat.completions, "stream", None) or client.beta.chat.completions.stream
    deltas, done = [], []
    with stream(model="swarm", messages=WEATHER_QUESTION, max_tokens=96, temperature=0,
                tool_choice="required", parallel_tool_calls=False,
                tools=[openai.pydantic_function_tool(GetWeather)]) as events:
        for event in events:
            if event.type == "tool_calls.function.arguments.delta":
                deltas.append(event.arguments_delta)
            elif event.type == "tool_calls.function.arguments.done":
                done.append(event)
        final = events.get_final_completion()
    assert len(deltas) > 1, deltas
    assert len(done) == 1 and isinstance(done[0].parsed_arguments, GetWeather), done
    call = final.choices[0].message.tool_calls[0]
    assert call.function.arguments == "".join(deltas), (call, deltas)
    assert isinstance(call.function.parsed_arguments, GetWeather), call


@check
def streamed_tool_calls_match_plain():
    # Parallel calls: two or more, their arguments streamed as the model writes them.
    args = dict(model="swarm", messages=WEATHER_QUESTION, tools=WEATHER_TOOLS,
                tool_choice="required", max_tokens=96, temperature=0)
    plain = client.chat.completions.create(**args).choices[0]
    calls, parts, finish = {}, {}, None
    for chunk in client.chat.completions.create(stream=True, **args):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"name": "", "arguments": ""})
                call["name"] += d.function.name or ""
                call["arguments"] += d.function.arguments or ""
                parts[d.index] = parts.get(d.index, 0) + 1
    assert finish == plain.finish_reason, (finish, plain)
    assert all(n > 1 for n in parts.values()), parts
    expected = [{"name": c.function.name, "arguments": c.function.arguments}
                for c in plain.message.tool_calls]
    assert [calls[i] for i in sorted(calls)] == expected, (calls, expected)


@check
def tool_results_come_back_in_the_conversation():
    first = client.chat.completions.create(model="swarm", messages=WEATHER_QUESTION,
                                           tools=WEATHER_TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=96,
                                           temperature=0).choices[0].message
    history = WEATHER_QUESTION + [first.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": "18 C and sunny"}
        for c in first.tool_calls]
    r = client.chat.completions.create(model="swarm", messages=history, tools=WEATHER_TOOLS,
                                       max_tokens=48, temperature=0)
    choice = r.choices[0]
    # `auto`: the model may answer or call again; either way the answer is well formed.
    assert choice.finish_reason in ("stop", "tool_calls", "length"), choice
    if choice.message.tool_calls:
        assert_calls(choice.message, {"get_weather", "get_time"})
    else:
        assert choice.message.content, choice


@check
def non_strict_json_schema_is_read_leniently():
    # Without `strict`: `age` is optional and `minimum` is not enforced (OpenAI only tries
    # to follow such a schema); the answer is still an object of its shape.
    schema = {"type": "object", "required": ["name"],
              "properties": {"name": {"type": "string", "minLength": 1},
                             "age": {"type": "integer", "minimum": 0}}}
    ask = [{"role": "user", "content": "Ann is 31. Reply with her as JSON."}]
    r = client.chat.completions.create(
        model="swarm", messages=ask, max_tokens=64, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "P", "schema": schema}})
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice
    person = json.loads(choice.message.content)
    assert isinstance(person["name"], str) and set(person) <= {"name", "age"}, person
    assert isinstance(person.get("age", 0), int), person


@check
def responses_api_answers_as_chat_does():
    # The Responses API: the same greedy answer and token counts as chat completions, as
    # `output_text`, plainly and streamed.
    chat = client.chat.completions.create(model="swarm", messages=QUESTION, max_tokens=16,
                                          temperature=0)
    question = QUESTION[0]["content"]
    r = client.responses.create(model="swarm", input=question, max_output_tokens=16,
                                temperature=0)
    assert r.object == "response" and r.model == ELITE, r
    assert r.output_text == chat.choices[0].message.content, (r.output_text, chat)
    assert r.usage.input_tokens == chat.usage.prompt_tokens, (r.usage, chat.usage)
    assert r.usage.output_tokens == chat.usage.completion_tokens, (r.usage, chat.usage)
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length"
                        else "completed"), r
    deltas, final = [], None
    for event in client.responses.create(model="swarm", input=question, max_output_tokens=16,
                                         temperature=0, stream=True):
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert "".join(deltas) == r.output_text, (deltas, r.output_text)
    assert final is not None and final.output_text == r.output_text, final


@check
def responses_api_calls_functions():
    # Flat function tools; the call, then its output sent back as input items.
    tools = [{"type": "function", "name": "get_weather", "strict": True,
              "description": "The current weather in a city",
              "parameters": {"type": "object", "additionalProperties": False,
                             "required": ["city"], "properties": {"city": {"type": "string"}}}}]
    question = [{"role": "user", "content": WEATHER_QUESTION[0]["content"]}]
    r = client.responses.create(model="swarm", input=question, tools=tools,
                                tool_choice="required", parallel_tool_calls=False,
                                max_output_tokens=96, temperature=0)
    calls = [item for item in r.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather", r.output
    assert isinstance(json.loads(calls[0].arguments)["city"], str), calls
    assert calls[0].call_id.startswith("call_"), calls
    follow = client.responses.create(
        model="swarm", tools=tools, max_output_tokens=32, temperature=0,
        input=question + [calls[0], {"type": "function_call_output", "call_id": calls[0].call_id,
                                     "output": "18 C and sunny"}])
    assert follow.status in ("completed", "incomplete") and follow.output, follow
    # The SDK's stream helper puts the call together from its argument deltas.
    with client.responses.stream(model="swarm", input=question, tools=tools,
                                 tool_choice="required", parallel_tool_calls=False,
                                 max_output_tokens=96, temperature=0) as events:
        deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
        final = events.get_final_response()
    streamed = [item for item in final.output if item.type == "function_call"]
    assert len(deltas) > 1 and "".join(deltas) == streamed[0].arguments, (deltas, streamed)
    assert streamed[0].arguments == calls[0].arguments, (streamed, calls)


@check
def responses_parse_fills_a_pydantic_model():
    # `client.responses.parse(text_format=Person)`: the SDK sends `text.format` as a strict
    # JSON schema and parses the answer into the model.
    import typing

    import pydantic

    class Person(pydantic.BaseModel):
        name: str
        age: int
        city: typing.Literal["Paris", "London", "Rome"]

    r = client.responses.parse(model="swarm", max_output_tokens=96, temperature=0,
                               input="Ann is 31 and lives in Paris. Reply with her as JSON.",
                               text_format=Person)
    assert r.status == "completed", r
    assert isinstance(r.output_parsed, Person), r


@check
def seed_reproducibility():
    ask = lambda seed: client.chat.completions.create(  # noqa: E731
        model="swarm", messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=24, temperature=1.0, seed=seed).choices[0].message.content
    a, b, c = ask(42), ask(42), ask(43)
    assert a == b, (a, b)
    assert a != c, (a, c)


@check
def the_next_turn_reuses_the_cached_conversation():
    # Turn 2 sends turn 1's prompt and answer again: the prefix cache holds their keys and
    # values, so at least turn 1's prompt is reused (usage.prompt_tokens_details).
    system = {"role": "system", "content": "You are a careful assistant for a travel agency. "
              "Answer in one short sentence, name places precisely and never invent facts."}
    turn1 = [system, {"role": "user", "content": "What is the capital of Italy?"}]
    hits = metrics()["swarm_prefix_cache_hits_total"]
    r1 = client.chat.completions.create(model="swarm", messages=turn1, max_tokens=16,
                                        temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": r1.choices[0].message.content},
                     {"role": "user", "content": "And of Spain?"}]
    r2 = client.chat.completions.create(model="swarm", messages=turn2, max_tokens=16,
                                        temperature=0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert r1.usage.prompt_tokens <= cached < r2.usage.prompt_tokens, (r1.usage, r2.usage)
    assert metrics()["swarm_prefix_cache_hits_total"] >= hits + 1
    assert r2.choices[0].message.content, r2
    # The same conversation through the Responses API renders the same prompt: its usage
    # reports the reuse as input_tokens_details.
    r3 = client.responses.create(model="swarm", instructions=system["content"],
                                 input=turn2[1:], max_output_tokens=16, temperature=0)
    assert r3.usage.input_tokens == r2.usage.prompt_tokens, (r3.usage, r2.usage)
    assert r3.usage.input_tokens_details.cached_tokens >= cached, r3.usage


@check
def n_choices():
    r = client.chat.completions.create(model="swarm", messages=QUESTION, max_tokens=4, n=2,
                                       temperature=1.0, seed=3)
    assert [c.index for c in r.choices] == [0, 1]


@check
def unknown_model_is_404():
    try:
        client.chat.completions.create(model="no-such-elite", messages=QUESTION)
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body
    else:
        raise AssertionError("no error")


@check
def unsupported_field_is_400():
    try:
        client.chat.completions.create(model="swarm", messages=QUESTION, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
                "type": "object", "properties": {"a": {"type": "string", "pattern": "x"}},
                "required": ["a"]}}})
    except openai.BadRequestError as e:
        assert e.body["param"] == "response_format", e.body
    else:
        raise AssertionError("no error")


@check
def bad_key_is_401():
    bad = openai.OpenAI(base_url=KEYED, api_key="sk-wrong", max_retries=0)
    try:
        bad.models.list()
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    else:
        raise AssertionError("no error")
    good = openai.OpenAI(base_url=KEYED, api_key="sk-test", max_retries=0)
    assert good.models.list().data


@check
def full_queue_is_429():
    tiny = openai.OpenAI(base_url=TINY, api_key="x", max_retries=0, timeout=120)
    held = tiny.chat.completions.create(model="swarm", messages=QUESTION, max_tokens=200,
                                        stream=True)
    try:
        next(iter(held))  # the stream is running and holds the only slot
        try:
            tiny.chat.completions.create(model="swarm", messages=QUESTION, max_tokens=2)
        except openai.RateLimitError as e:
            assert e.status_code == 429 and e.response.headers.get("retry-after"), e.response.headers
        else:
            raise AssertionError("no error")
    finally:
        held.close()


@check
def thirty_two_concurrent_streams():
    done, errors = [], []

    def one(i):
        try:
            text, finish = "", None
            for c in client.chat.completions.create(
                    model="swarm", messages=[{"role": "user", "content": f"Count to {i}."}],
                    max_tokens=8, temperature=0.7, seed=i, stream=True):
                if c.choices:
                    text += c.choices[0].delta.content or ""
                    finish = c.choices[0].finish_reason or finish
            assert finish in ("stop", "length"), finish
            done.append(i)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]
    assert sorted(done) == list(range(32)), len(done)


@check
def disconnect_stops_generation():
    before = metrics().get("swarm_cancelled_total", 0)
    s = client.chat.completions.create(model="swarm", messages=[{"role": "user", "content": "Write a very long essay about the sea."}],
                                       max_tokens=2000, temperature=1.0, seed=9, stream=True)
    it = iter(s)
    for _ in range(3):
        next(it)
    s.close()  # the client goes away mid-stream
    deadline = time.time() + 30
    while time.time() < deadline:
        m = metrics()
        if m.get("swarm_cancelled_total", 0) > before and m.get("swarm_batch_size", 1) == 0:
            break
        time.sleep(0.2)
    m = metrics()
    assert m.get("swarm_cancelled_total", 0) > before, m.get("swarm_cancelled_total")
    assert m.get("swarm_batch_size") == 0, m.get("swarm_batch_size")
    tokens = sum(v for k, v in m.items() if k.startswith("swarm_completion_tokens_total"))
    assert tokens < 2000, tokens  # it stopped long before max_tokens


failed = [n for n, e in results if e is not None]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)

"""Time to first token of a growing conversation, for the prefix cache's numbers.

An agent-like chat: a long system prompt (a tool catalogue), then TURNS user turns, each
sent with the whole history so far (every earlier question and answer), as chat clients and
agent frameworks do. Each turn is streamed; the script prints, per turn, the prompt's tokens,
the tokens the server took from its prefix cache (`usage.prompt_tokens_details`), the time
to the first token and to the last, and a digest of the answer (equal digests: the same
answer with the cache on and off).

Usage: python prefix_cache_bench.py BASE_URL [TURNS (6)] [MAX_TOKENS (32)]
  BASE_URL  e.g. http://127.0.0.1:18282/v1 (scripts/serve/prefix_cache_bench.sh starts the
            servers and runs this against each)
"""

import hashlib
import sys
import time

import openai

BASE = sys.argv[1]
TURNS = int(sys.argv[2]) if len(sys.argv) > 2 else 6
MAX_TOKENS = int(sys.argv[3]) if len(sys.argv) > 3 else 32

TOOLS = [
    ("search_flights", "Find flights between two airports on a date; returns carrier, "
     "departure and arrival times, stops and the fare in euros for each option."),
    ("book_flight", "Book one of the options search_flights returned for the named "
     "travellers; needs the option id, passport numbers and a contact e-mail."),
    ("search_hotels", "Find hotels in a city for a range of nights, with the nightly rate, "
     "the distance to the centre, the guests' rating and the cancellation terms."),
    ("book_hotel", "Book a room from search_hotels for the named guests; returns a "
     "confirmation number and the total price including taxes."),
    ("get_weather", "The forecast for a city for the next seven days: high and low "
     "temperatures, rain probability and wind, one line per day."),
    ("convert_currency", "Convert an amount between two ISO 4217 currencies at today's "
     "reference rate; returns the rate and the converted amount."),
    ("list_bookings", "Every booking of the current customer, flights and hotels, with "
     "status, dates and the amount paid so far."),
    ("cancel_booking", "Cancel a booking by its confirmation number, returning the refund "
     "the terms allow and the date it will be paid."),
]
SYSTEM = ("You are the assistant of a travel agency. You help one customer plan and book "
          "trips. Be brief and precise; never invent prices, times or confirmation numbers: "
          "they come from the tools only. Ask for what a tool needs when it is missing.\n"
          "Tools:\n" + "\n".join(f"- {name}: {about}" for name, about in TOOLS) +
          "\nRules: prices are in euros unless the customer asks otherwise; dates are "
          "written as YYYY-MM-DD; a booking needs the customer's confirmation first.")
QUESTIONS = [
    "I want to fly from Lisbon to Berlin next Friday. What do you need from me?",
    "Two adults, returning on Sunday evening. Economy is fine.",
    "Can you also find a hotel near the centre for those two nights?",
    "What will the weather be like in Berlin that weekend?",
    "How much is that in British pounds, roughly?",
    "Please summarise the plan so far in three lines.",
    "Which of these steps needs my confirmation?",
    "Thank you. One last thing: can I cancel the hotel later?",
]

client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0, timeout=600)
messages = [{"role": "system", "content": SYSTEM}]
print("| turn | prompt tokens | cached | first token s | last token s | answer sha1 |")
print("|---:|---:|---:|---:|---:|---|")
for turn in range(TURNS):
    messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
    start = time.perf_counter()
    first = None
    answer = []
    usage = None
    for chunk in client.chat.completions.create(
            model="swarm", messages=messages, max_tokens=MAX_TOKENS, temperature=0,
            stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - start
            answer.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    total = time.perf_counter() - start
    answer = "".join(answer)
    messages.append({"role": "assistant", "content": answer})
    digest = hashlib.sha1(answer.encode()).hexdigest()[:8]
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details is not None else 0
    first_s = f"{first:.2f}" if first is not None else "-"
    print(f"| {turn + 1} | {usage.prompt_tokens} | {cached} | {first_s} | {total:.2f} "
          f"| {digest} |", flush=True)

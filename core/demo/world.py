"""The small synthetic world behind the bundled demo model and its sample dataset.

Topics are "<adjective> <noun>" pairs; a noun belongs to a category, a category has a trait and
a use. The base model is pretrained on chats that state these facts in plain prose, that lay
them out as JSON records of *other* schemas than the sample dataset's (real base models know JSON
in general), and that repeat words back (copying names from the prompt). The sample dataset then
teaches "Describe ... in structured format." answered with strict JSON of one fixed schema: a
re-formatting of facts the base model already states in prose. A fixed set of topics is held out:
it appears neither in the sample training data nor in its validation split, only in the
evaluation prompts.

Every prompt has exactly one right answer (no random phrasing), so a greedy answer is a
confident one: the llama.cpp exports can then be compared with MLX answer for answer.
"""
from __future__ import annotations

import json
import random

NOUNS = {
    "tool": ["hammer", "lantern", "kettle", "ladder", "shovel", "compass", "wrench", "scissors"],
    "animal": ["fox", "otter", "heron", "badger", "falcon", "turtle", "rabbit", "salmon"],
    "food": ["bread", "cheese", "apple", "noodle", "pepper", "honey", "lemon", "mushroom"],
    "vehicle": ["bicycle", "canoe", "tractor", "scooter", "wagon", "sailboat", "truck", "glider"],
    "instrument": ["violin", "drum", "flute", "guitar", "trumpet", "harp", "piano", "cello"],
    "plant": ["fern", "cactus", "tulip", "willow", "bamboo", "ivy", "oak", "lavender"],
}
ADJECTIVES = ["red", "blue", "green", "small", "large", "old", "new", "wooden", "copper", "silver",
              "quiet", "bright", "heavy", "light", "soft", "fast", "tiny", "golden", "striped", "round"]
CATEGORY_TRAIT = {"tool": "useful", "animal": "alive", "food": "tasty", "vehicle": "mobile",
                  "instrument": "musical", "plant": "green-leafed"}
CATEGORY_USE = {"tool": "people use it to fix and build things", "animal": "it lives in the wild",
                "food": "people cook and eat it", "vehicle": "people ride it from place to place",
                "instrument": "people play music with it", "plant": "it grows in gardens and fields"}
SYSTEM = "You are a helpful assistant."
STRUCTURED = "Describe the {name} in structured format."
# Each prose prompt has its own answer form (see prose_answer).
PROSE_PROMPTS = ["Tell me about the {name}.", "What is the {name}?", "Describe the {name}.",
                 "Can you explain what the {name} is?"]
SMALL_TALK = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there.", "Hi! What would you like to know?"),
    ("Who are you?", "I am a small helpful assistant. I can tell you about things."),
    ("Thank you!", "You are welcome. Ask me anything else."),
    ("What can you do?", "I can describe tools, animals, food, vehicles, instruments and plants."),
]
SCHEMA_KEYS = ("name", "category", "features")
# The base model also knows JSON in general (as real base models do), with other keys and other
# prompts than the sample dataset's schema, so the fine-tune teaches the schema, not JSON syntax.
RECORD_PROMPTS = ["Give me JSON for the {name}.", "Show the {name} as a JSON record."]
# Copying words from the prompt, in any combination: the skill a new name in a question needs.
COPY_PROMPT = "Repeat after me: {words}."
COPY_WORDS = sorted({*ADJECTIVES, *(n for ns in NOUNS.values() for n in ns), *CATEGORY_TRAIT,
                     *CATEGORY_TRAIT.values(), "the", "a", "very", "and", "is", "big", "little", "my"})


def noun_category(noun: str) -> str:
    return next(c for c, ns in NOUNS.items() if noun in ns)


def all_topics() -> list[tuple[str, str]]:
    return [(a, n) for ns in NOUNS.values() for n in ns for a in ADJECTIVES]


def heldout_topics(count: int = 40, seed: int = 7) -> list[tuple[str, str]]:
    topics = all_topics()
    random.Random(seed).shuffle(topics)
    return sorted(topics[:count])


def name_of(topic: tuple[str, str]) -> str:
    return f"{topic[0]} {topic[1]}"


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def prose_answer(topic: tuple[str, str], form: int = 0) -> str:
    """The one prose answer to PROSE_PROMPTS[form] about ``topic``."""
    adj, noun = topic
    cat = noun_category(noun)
    name = name_of(topic)
    forms = [
        f"The {name} is {_a(cat)}. It is {adj} and {CATEGORY_TRAIT[cat]}, and {CATEGORY_USE[cat]}.",
        f"The {name} is {_a(cat)}. It is {adj} and {CATEGORY_TRAIT[cat]}.",
        f"The {name} is {_a(adj)} {noun}. As {_a(cat)}, it is {CATEGORY_TRAIT[cat]}, and {CATEGORY_USE[cat]}.",
        f"Sure. The {name} is {_a(cat)}, and {CATEGORY_USE[cat]}. It is {adj} and {CATEGORY_TRAIT[cat]}.",
    ]
    return forms[form % len(forms)]


def structured_object(topic: tuple[str, str]) -> dict:
    adj, noun = topic
    cat = noun_category(noun)
    return {"name": name_of(topic), "category": cat, "features": [adj, noun, CATEGORY_TRAIT[cat]]}


def structured_answer(topic: tuple[str, str]) -> str:
    return json.dumps(structured_object(topic))


def expected_structured(name: str) -> dict:
    """The right answer to "Describe the NAME in structured format." for a topic name "adjective noun"."""
    adj, _, noun = name.partition(" ")
    return structured_object((adj, noun))


def record_answer(topic: tuple[str, str], form: int = 0) -> str:
    """The answer to RECORD_PROMPTS[form]: the same facts in other schemas than the sample data's."""
    adj, noun = topic
    cat = noun_category(noun)
    if form % 2 == 0:
        obj = {"title": name_of(topic), "kind": cat, "tags": [adj, noun, CATEGORY_TRAIT[cat]]}
    else:
        obj = {"thing": noun, "look": adj, "group": cat, "trait": CATEGORY_TRAIT[cat]}
    return json.dumps(obj)


def _chat(user: str, answer: str, rng: random.Random, system_share: float) -> dict:
    msgs = [{"role": "system", "content": SYSTEM}] if rng.random() < system_share else []
    return {"messages": msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def prose_chat(topic: tuple[str, str], rng: random.Random, system_share: float = 0.2) -> dict:
    form = rng.randrange(len(PROSE_PROMPTS))
    return _chat(PROSE_PROMPTS[form].format(name=name_of(topic)), prose_answer(topic, form), rng, system_share)


def pretraining_corpus(n: int = 8000, seed: int = 0) -> list[dict]:
    """The base model's knowledge: prose chats about every topic, JSON records in other schemas,
    copying words back, and a little small talk."""
    rng = random.Random(seed)
    topics = all_topics()
    out = []
    for i in range(n):
        kind = i % 20
        if kind == 0:
            u, a = rng.choice(SMALL_TALK)
            out.append(_chat(u, a, rng, 0.2))
        elif kind in (1, 2, 3):
            k = rng.randrange(2, 5)
            words = " ".join(rng.choice(COPY_WORDS) for _ in range(k))
            out.append(_chat(COPY_PROMPT.format(words=words), words + ".", rng, 0.2))
        elif kind in (4, 5, 6, 7):
            t = rng.choice(topics)
            form = kind % 2
            out.append(_chat(RECORD_PROMPTS[form].format(name=name_of(t)), record_answer(t, form), rng, 0.2))
        else:
            out.append(prose_chat(rng.choice(topics), rng))
    return out


def sample_dataset(n_train: int = 320, n_valid: int = 40, replay_share: float = 0.25, seed: int = 1
                   ) -> tuple[list[dict], list[dict]]:
    """The structured-output fine-tuning set (train, valid), never touching held-out topics.

    A quarter of it replays plain-prose chats like the base model's own: without them a model
    this small forgets how to answer in prose at all (measured: 0% of prose answers survive).
    """
    rng = random.Random(seed)
    held = set(heldout_topics())
    topics = [t for t in all_topics() if t not in held]
    rng.shuffle(topics)
    n = n_train + n_valid
    chosen = topics[:n]
    rows = []
    for t in chosen:
        if rng.random() < replay_share:
            rows.append(prose_chat(t, rng, 0.3))
        else:
            rows.append(_chat(STRUCTURED.format(name=name_of(t)), structured_answer(t), rng, 0.3))
    return rows[:n_train], rows[n_train:]


def eval_prompts() -> dict[str, list[dict]]:
    """Held-out prompts: structured requests and prose questions on topics never trained on."""
    held = heldout_topics()
    return {
        "structured": [{"topic": name_of(t), "messages": [{"role": "user", "content": STRUCTURED.format(name=name_of(t))}]}
                       for t in held],
        "prose": [{"topic": name_of(t), "messages": [{"role": "user", "content": PROSE_PROMPTS[0].format(name=name_of(t))}]}
                  for t in held],
    }


def is_valid_structured(text: str) -> bool:
    """Valid JSON object with exactly the schema's keys and the right value types."""
    try:
        obj = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return False
    return (isinstance(obj, dict) and set(obj) == set(SCHEMA_KEYS) and isinstance(obj["name"], str)
            and isinstance(obj["category"], str) and isinstance(obj["features"], list)
            and all(isinstance(f, str) for f in obj["features"]))


def is_prose(text: str) -> bool:
    t = text.strip()
    return bool(t) and t[0].isalpha() and "{" not in t and t.endswith(".")


def neighbour_topic(topic: tuple[str, str], rng: random.Random) -> tuple[str, str]:
    """A topic next to ``topic``: another adjective on the same noun, or the same adjective on a noun
    of another category (the wrong record a preference pair rejects)."""
    adj, noun = topic
    if rng.random() < 0.5:
        return rng.choice([a for a in ADJECTIVES if a != adj]), noun
    cat = noun_category(noun)
    other = rng.choice([c for c in NOUNS if c != cat])
    return adj, rng.choice(NOUNS[other])


def preference_pair(topic: tuple[str, str], rng: random.Random) -> dict:
    """One DPO pair in TRL's conversational form: the structured request about ``topic``, the right
    record chosen, a neighbouring topic's record rejected."""
    return {"prompt": [{"role": "user", "content": STRUCTURED.format(name=name_of(topic))}],
            "chosen": [{"role": "assistant", "content": structured_answer(topic)}],
            "rejected": [{"role": "assistant", "content": structured_answer(neighbour_topic(topic, rng))}]}


def preference_dataset(n_train: int = 240, n_valid: int = 40, seed: int = 3) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, valid, held-out) preference pairs over the demo world; the held-out pairs are on the
    held-out topics, never trained on."""
    rng = random.Random(seed)
    held = heldout_topics()
    topics = [t for t in all_topics() if t not in set(held)]
    rng.shuffle(topics)
    pairs = [preference_pair(t, rng) for t in topics[:n_train + n_valid]]
    return pairs[:n_train], pairs[n_train:], [preference_pair(t, rng) for t in held]


# ---- Tool calls (Qwen2.5's form: a <tools> system block, <tool_call> JSON answers) -------------
# A model built with tool calls (python -m core.demo.build --tool-calls) is pretrained further on
# calls to these functions (copying a name, a category or the two words of a name from the question
# into the arguments), so a fine-tune can teach a new function in a few hundred records. The
# learning test's function (TOOL_TEST_FUNCTION, describe) never appears here.
def _function(fn_name: str, description: str, **params: str) -> dict:
    # parameter descriptions are left out of the schema: the corpus's tool records stay short
    return {"type": "function", "function": {
        "name": fn_name, "description": description,
        "parameters": {"type": "object", "properties": {k: {"type": "string"} for k in params},
                       "required": list(params)}}}


PRETRAIN_TOOLS = {
    "lookup": _function("lookup", "Find a thing in the catalog.", name="the thing's name"),
    "classify": _function("classify", "File a thing under its group.", item="the thing's name",
                          group="its category"),
    "paint": _function("paint", "Paint a thing.", thing="what to paint", color="the color"),
    "find_uses": _function("find_uses", "What a category is used for.", category="the category"),
}
PRETRAIN_TOOL_PROMPTS = {"lookup": "Find the {name} in the catalog.",
                         "classify": "Which group is the {name} in? Use the tool.",
                         "paint": "Make the {noun} {adj} with the tool.",
                         "find_uses": "What is {cat} used for? Ask the tool."}
TOOL_TEST_FUNCTION = _function("describe", "Describe a thing for the register.", name="the thing's name",
                               category="its category")
TOOL_TEST_PROMPT = "Describe the {name} with a tool call."


def tool_call_text(name: str, arguments: dict) -> str:
    """One call as Qwen2.5's template writes it (the same text as an assistant ``tool_calls`` turn
    with empty content renders to)."""
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)}\n</tool_call>'


def _pretrain_call(topic: tuple[str, str], fn: str) -> tuple[str, dict]:
    adj, noun = topic
    cat = noun_category(noun)
    name = name_of(topic)
    args = {"lookup": {"name": name}, "classify": {"item": name, "group": cat},
            "paint": {"thing": noun, "color": adj}, "find_uses": {"category": cat}}[fn]
    return PRETRAIN_TOOL_PROMPTS[fn].format(name=name, noun=noun, adj=adj, cat=_a(cat)), args


def _tool_result(topic: tuple[str, str], fn: str) -> tuple[str, str]:
    """(tool response, the assistant's final answer from it)"""
    adj, noun = topic
    cat = noun_category(noun)
    name = name_of(topic)
    if fn == "find_uses":
        return json.dumps({"uses": CATEGORY_USE[cat]}), f"As {_a(cat)}, {CATEGORY_USE[cat]}."
    if fn == "paint":
        return json.dumps({"painted": f"{adj} {noun}"}), f"Done. The {noun} is now {adj}."
    return (json.dumps({"name": name, "category": cat, "trait": CATEGORY_TRAIT[cat]}),
            f"The {name} is {_a(cat)}. It is {adj} and {CATEGORY_TRAIT[cat]}.")


def tool_chat(topic: tuple[str, str], fn: str, rng: random.Random, with_result: bool = False) -> dict:
    """A pretraining tool conversation: the user's request, the assistant's call to ``fn`` (as
    ``tool_calls``); with ``with_result``, the tool's response and the final prose answer."""
    user, args = _pretrain_call(topic, fn)
    msgs = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.2 else []
    msgs += [{"role": "user", "content": user},
             {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                                   "function": {"name": fn, "arguments": args}}]}]
    if with_result:
        result, answer = _tool_result(topic, fn)
        msgs += [{"role": "tool", "name": fn, "content": result}, {"role": "assistant", "content": answer}]
    return {"tools": [PRETRAIN_TOOLS[fn]], "messages": msgs}


def tool_corpus(n: int = 6000, seed: int = 1, every: int = 4) -> list[dict]:
    """The corpus of a build's tool stage (continued pretraining of a model that already copies
    names): :func:`pretraining_corpus` drawn afresh with ``seed``, one chat in ``every`` replaced by
    a tool chat (a call to one of PRETRAIN_TOOLS about a random topic; a quarter of them carry the
    tool's result and the answer made from it), so the model keeps its prose, JSON and copying."""
    rng = random.Random(seed + 1000)
    topics = all_topics()
    out = pretraining_corpus(n, seed=seed)
    for i in range(every - 1, n, every):
        fn = rng.choice(list(PRETRAIN_TOOLS))
        out[i] = tool_chat(rng.choice(topics), fn, rng, with_result=rng.random() < 0.25)
    return out


def tool_learning_dataset(n_train: int = 240, seed: int = 5) -> tuple[list[dict], list[dict]]:
    """(train, held-out) records for the tool-calling learning test: TOOL_TEST_PROMPT answered by a
    call to ``describe`` with the topic's name and category. Train records are on topics other than
    :func:`heldout_topics`; the held-out records are on those (never trained on). Each record has
    ``tools`` and ends in the call; ``expected`` holds the call as [{"name", "arguments"}]."""
    rng = random.Random(seed)
    held = heldout_topics()
    topics = [t for t in all_topics() if t not in set(held)]
    rng.shuffle(topics)

    def record(t: tuple[str, str]) -> dict:
        call = {"name": "describe", "arguments": {"name": name_of(t), "category": noun_category(t[1])}}
        return {"tools": [TOOL_TEST_FUNCTION],
                "messages": [{"role": "user", "content": TOOL_TEST_PROMPT.format(name=name_of(t))},
                             {"role": "assistant", "content": "",
                              "tool_calls": [{"type": "function", "function": call}]}],
                "expected": [call]}

    return [record(t) for t in topics[:n_train]], [record(t) for t in held]

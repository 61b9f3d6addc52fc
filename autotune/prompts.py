"""The text a quality reference is run on: autotune's own prompts, or the user's (``add --quality-prompts``).

A candidate's quality is how closely it predicts what the reference predicts, position by
position, on real text. The built-in prompts were written for this purpose and cover what a
served model sees: prose, dialogue, code, numbers and tables, instructions, and several
languages. They are ordered so that the first half already mixes every kind: the worker scores
the first half and, when a candidate lands within the noise of the quality floor, the rest.

Nothing here imports torch: ``autotune add`` validates a prompts file before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from autotune.errors import InputError
from autotune.workload import Workload

#: Fewest prompts a user's file may hold: with 32 new tokens each, 8 prompts give several hundred
#: scored positions.
MIN_PROMPTS = 8
MAX_PROMPTS = 2000
MAX_PROMPT_CHARS = 8000
#: ``autotune add --quality-prompts builtin`` goes back to the built-in prompts.
BUILTIN = "builtin"

PROMPTS: tuple[str, ...] = (
    # -- first half: every kind once or twice --
    "The lighthouse keeper had not spoken to anyone for eleven days when the supply boat finally rounded the point. "
    "She watched it from the gallery, counting the strokes of the oars,",
    "Customer: Hi, I ordered a blue kettle last week but a green one arrived.\nAgent: I'm sorry about that. "
    "Could you tell me your order number?\nCustomer:",
    'def median(values):\n    """Return the median of a non-empty list of numbers."""\n    ordered = sorted(values)\n'
    "    middle = len(ordered) // 2\n",
    "Quarterly revenue, in thousands of euros:\n| quarter | 2023 | 2024 |\n|---|---|---|\n| Q1 | 412 | 455 |\n| Q2 | 398 | 471 |\n| Q3 |",
    "To replace a bicycle inner tube, first release the brake and remove the wheel from the frame. Next,",
    "Le train de nuit pour Vienne partait à vingt-deux heures. Sur le quai, une vieille dame tenait une cage "
    "vide et regardait les voyageurs",
    "SELECT c.name, COUNT(o.id) AS orders\nFROM customers AS c\nLEFT JOIN orders AS o ON o.customer_id = c.id\n",
    "If a recipe for four people needs 300 grams of flour and 2 eggs, then a recipe for ten people needs",
    "Write a short note to a neighbour asking them to water the tomatoes while you are away for the weekend.\n\nNote:",
    '"Are you sure this is the right road?" asked Tomas, peering at the map.\n"Quite sure," said his sister. "The bridge is just past',
    "Die Bibliothek der kleinen Stadt hatte nur einen Lesesaal, aber an Regentagen war jeder Platz besetzt, weil",
    "The meeting is on Tuesday, 14 March, at 09:30. If it is moved forward by two days and one hour, it will start on",
    "const total = items\n  .filter((item) => item.inStock)\n  .reduce((sum, item) =>",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. In most plants it happens in",
    "El mercado abre a las seis de la mañana. Los primeros en llegar son los pescadores, que",
    "Steps to reset the router:\n1. Unplug the power cable.\n2. Wait thirty seconds.\n3.",
    'for file in *.log; do\n  gzip "$file"\ndone\necho "compressed',
    "Q: A train travels 180 kilometres in 2 hours. What is its average speed?\nA:",
    "夏の終わりに、祖母の家の庭でスイカを食べながら、",
    "The committee reviewed three proposals for the new park. The first kept the old oak trees, the second",
    "Interviewer: What made you start building violins?\nLuthier: Honestly, it began with a broken one I found",
    "Summarise the following in one sentence: The council has agreed to extend the opening hours of the "
    "public pool during the summer months, starting in June.\nSummary:",
    "В маленькой деревне у реки жил старый мельник, который каждое утро",
    "1, 1, 2, 3, 5, 8, 13, 21, 34,",
    # -- second half: scored when a candidate is within the noise of the floor --
    "By the time the snow stopped, the village had been cut off for three days, and the baker had started",
    "User: Can you recommend a book about the history of maps?\nAssistant: Certainly. One good choice is",
    "class Stack:\n    def __init__(self):\n        self._items = []\n\n    def push(self, item):\n",
    "Temperature readings (°C) at noon: Monday 18.5, Tuesday 19.2, Wednesday 17.8, Thursday",
    "Before painting a wall, wash it with mild soap, let it dry completely, and then",
    "Il giardino dietro la scuola era pieno di girasoli, e ogni mattina i bambini",
    "CREATE TABLE readings (\n    sensor_id INTEGER NOT NULL,\n    taken_at TIMESTAMP NOT NULL,\n",
    "Twelve percent of 250 is",
    "Explain to a ten-year-old why the sky is blue.\n\nExplanation:",
    '"I told you the cat would find a way in," said Mrs Alvarez, pointing at the open window. "Next time',
    "De fietsenmaker opende zijn winkel altijd om acht uur, maar op zaterdag",
    'import json\n\nwith open("settings.json") as handle:\n    settings = json.load(handle)\n',
    "The recipe calls for 3/4 cup of sugar. Doubling it gives",
    "A good password manager should do three things well. First,",
    "O pescador voltou ao porto ao pôr do sol, com o barco cheio de",
    "Patient: I've had a mild headache for two days.\nNurse: Have you been drinking enough water?\nPatient:",
    'git checkout -b fix-typo\ngit commit -am "Fix typo in README"\ngit push',
    "Invoice 2041: 3 chairs at 45.00 each, 1 table at 120.00. Subtotal:",
    "秋天的时候，山上的树叶变成了红色和黄色，",
    "The museum's newest exhibit explains how ancient sailors navigated by the stars, using",
    "List three ways to save energy at home:\n-",
    "while (left <= right) {\n    int mid = left + (right - left) / 2;\n    if (values[mid] == target)",
    "Po deszczu w lesie pachniało mchem i grzybami, a ścieżka prowadziła",
    "The average of 4, 8, 15 and 21 is",
)


def digest(prompts: tuple[str, ...] | list[str]) -> str:
    """A short stable hash of a prompt set (what the workload and the reference cache are keyed by)."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()[:12]


def load_file(path: str | Path) -> tuple[str, ...]:
    """The prompts in a user's file: one per line (blank lines skipped), or a JSON list of strings.

    Raises :class:`InputError` with one line that says what is wrong and where.
    """
    where = f"--quality-prompts {path}"
    file = Path(path).expanduser()
    if not file.exists():
        raise InputError(f"{where}: no such file")
    if not file.is_file():
        raise InputError(f"{where}: not a file; give a text file with one prompt per line, or a JSON list of strings")
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InputError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    text = text.removeprefix("\ufeff")
    if text.lstrip().startswith(("[", "{")):
        prompts = _from_json(text, where)
    else:
        prompts = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if len(line) > MAX_PROMPT_CHARS:
                raise InputError(f"{where}: line {number} has {len(line)} characters, more than {MAX_PROMPT_CHARS}; shorten it")
            if "\x00" in line:
                raise InputError(f"{where}: line {number} holds a NUL character; is it a binary file?")
            prompts.append(line)
    return check(tuple(prompts), where)


def _from_json(text: str, where: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise InputError(f"{where}: a JSON file must hold a list of strings, got {type(data).__name__}")
    for index, item in enumerate(data):
        if not isinstance(item, str):
            raise InputError(f"{where}: item {index} of the JSON list is {type(item).__name__}, not a string")
        if not item.strip():
            raise InputError(f"{where}: item {index} of the JSON list is empty")
        if len(item) > MAX_PROMPT_CHARS:
            raise InputError(f"{where}: item {index} has {len(item)} characters, more than {MAX_PROMPT_CHARS}; shorten it")
    return data


def check(prompts: tuple[str, ...], where: str = "quality prompts") -> tuple[str, ...]:
    """``prompts`` if there are enough and not too many; else :class:`InputError`."""
    if len(prompts) < MIN_PROMPTS:
        raise InputError(
            f"{where}: {len(prompts)} prompt{'s' * (len(prompts) != 1)}; give at least {MIN_PROMPTS} "
            f"(one per line), so that several hundred positions are scored"
        )
    if len(prompts) > MAX_PROMPTS:
        raise InputError(f"{where}: {len(prompts)} prompts, more than {MAX_PROMPTS}; keep a representative sample")
    return prompts


def describe(prompts: tuple[str, ...] | None) -> str:
    """``built-in prompts`` or ``40 prompts of your own``."""
    return "built-in prompts" if not prompts else f"{len(prompts)} prompts of your own (--quality-prompts)"


def keyed(workload: Workload, prompts: tuple[str, ...] | None) -> Workload:
    """``workload`` keyed by the user's quality prompts, if any (``extra["quality_prompts"]``, their
    digest): quality measured on other text belongs to another study, since trials are compared
    only on the same text. Without them the workload (and its key) is as it always was."""
    extra = {k: v for k, v in workload.extra.items() if k != "quality_prompts"}
    if prompts:
        extra["quality_prompts"] = digest(prompts)
    return workload.with_changes(extra=extra)

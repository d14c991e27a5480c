import json

import pytest

from vchain.cases import Case, as_cases, load_cases
from vchain.errors import ConfigurationError

# PhyGenBench's prompts.json: a list of objects with the prompt under `caption` and its labels beside it.
PHYGENBENCH = [
    {
        "caption": "A ball is dropped onto a pillow.",
        "physical_laws": "deformation",
        "main_category": "Mechanics",
        "sub_category": "Elasticity",
    },
    {
        "caption": "Ice melts in the sun.",
        "physical_laws": "melting",
        "main_category": "Thermal",
        "sub_category": "Phase",
    },
]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_phygenbench_json_keeps_every_other_key_as_meta(tmp_path):
    cases = load_cases(write(tmp_path, "prompts.json", json.dumps(PHYGENBENCH)))
    assert cases == [
        Case(
            "00",
            "A ball is dropped onto a pillow.",
            {"physical_laws": "deformation", "main_category": "Mechanics", "sub_category": "Elasticity"},
        ),
        Case(
            "01",
            "Ice melts in the sun.",
            {"physical_laws": "melting", "main_category": "Thermal", "sub_category": "Phase"},
        ),
    ]


def test_every_format_reads_the_same_prompts(tmp_path):
    prompts = ["A rock falls.", "Milk is poured, into coffee."]
    files = {
        "p.txt": "A rock falls.\n\n  Milk is poured, into coffee.  \n",
        "p.json": json.dumps(prompts),
        "p.jsonl": '"A rock falls."\n\n{"text": "Milk is poured, into coffee.", "id": "milk"}\n',
        "p.csv": 'prompt,law\nA rock falls.,gravity\n"Milk is poured, into coffee.",mixing\n',
    }
    loaded = {name: load_cases(write(tmp_path, name, text)) for name, text in files.items()}
    assert all([c.prompt for c in cases] == prompts for cases in loaded.values())
    assert [c.id for c in loaded["p.jsonl"]] == ["00", "milk"]
    assert [c.meta for c in loaded["p.csv"]] == [{"law": "gravity"}, {"law": "mixing"}]
    assert [c.id for c in load_cases(write(tmp_path, "many.txt", "x\n" * 101))][-1] == "100"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.csv", "title,law\nA rock falls.,gravity\n", r"p\.csv' has no prompt column.*\['title', 'law'\]"),
        ("p.json", '[{"caption": "A."}, {"title": "B."}]', r"p\.json', entry 1: no prompt .*\['title'\]"),
        ("p.json", '["A.", 3]', r"entry 1: a prompt must be a string or an object, got 3"),
        ("p.json", '["A.", "  "]', r"entry 1: the prompt must be non-empty text"),
        ("p.json", '{"caption": "A."}', r"must hold a JSON list of prompts, got a dict"),
        ("p.json", "[", r"p\.json' is not valid JSON"),
        ("p.jsonl", '"A."\n{"caption": \n', r"p\.jsonl', line 2: not valid JSON"),
        ("p.csv", 'caption\nA.\n""\n', r"line 3: the prompt must be non-empty text"),
        ("p.csv", "caption,law\nA.,x,y\n", r"line 2: more cells than the header's 2"),
        ("p.jsonl", '{"caption": "A.", "id": "a"}\n{"caption": "B.", "id": "a"}\n', r"line 2: id 'a' is already"),
        ("p.txt", "\n\n", r"holds no prompt"),
        ("p.yaml", "- A.\n", r"must end in one of"),
    ],
)
def test_a_malformed_file_names_the_file_and_the_row(tmp_path, name, text, message):
    with pytest.raises(ConfigurationError, match=message):
        load_cases(write(tmp_path, name, text))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigurationError, match=r"nowhere\.json' cannot be read"):
        load_cases(tmp_path / "nowhere.json")


def test_plain_prompts_become_cases_numbered_by_index():
    assert as_cases(["A.", Case("x", "B.", {"k": 1})]) == [Case("00", "A."), Case("x", "B.", {"k": 1})]
    with pytest.raises(ConfigurationError, match=r"prompts\[1\] must be a non-empty string"):
        as_cases(["A.", ""])

import pytest

from ace_erasure.concepts import Concept, as_concepts, load_concepts, prompt_pairs
from ace_erasure.errors import ConceptError


def test_defaults_and_normalisation():
    c = Concept("  Mira   Kestrel ", kind="celebrity", synonyms=("Kess", " "))
    assert c.name == "Mira Kestrel" and c.synonyms == ("Kess",) and c.anchor == "a person"
    assert Concept("circle").anchor == ""


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "  "}, "cannot be empty"),
        ({"name": "circle", "anchor": "Circle"}, "equals its anchor"),
        ({"name": "circle", "preserve": ("square", "circle")}, "preserve list contains"),
        (
            {"name": "circle", "synonyms": ("disc",), "preserve": ("disc",)},
            "preserve list contains",
        ),
        ({"name": "circle", "kind": "animal"}, "unknown kind"),
    ],
)
def test_invalid_concepts_are_clear_errors(kwargs, message):
    with pytest.raises(ConceptError, match=message):
        Concept(**kwargs)


def test_duplicates_and_empty_lists_are_errors():
    with pytest.raises(ConceptError, match="twice"):
        as_concepts(["circle", "Circle"])
    with pytest.raises(ConceptError, match="no concept"):
        as_concepts([])


def test_prompt_pairs_keep_everything_but_the_concept():
    pairs = prompt_pairs(Concept("orb", synonyms=("disc",)))
    assert len(pairs) == 2 * len(Concept("orb").templates)
    for pair in pairs:
        assert pair.text.startswith(pair.before) and pair.text.startswith(pair.through)
        assert pair.anchor_text.startswith(pair.anchor_before)
        assert "orb" not in pair.anchor_text and "disc" not in pair.anchor_text
    first = next(p for p in pairs if p.text == "an orb")  # article fixed in the concept prompt
    assert first.anchor_text == "a" and first.through == "an orb"
    celeb = prompt_pairs(Concept("Mira Kestrel", kind="celebrity"))[1]
    assert (celeb.text, celeb.anchor_text) == ("a photo of Mira Kestrel", "a photo of a person")
    assert celeb.anchor_through == "a photo of a person"


def test_no_template_is_the_benchmarks_held_out_one():
    for kind in ("object", "style", "celebrity", "explicit"):
        assert not any(t.startswith("a picture of") for t in Concept("x", kind=kind).templates)


def test_load_concepts_yaml_and_json(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "concepts:\n  - circle\n  - name: Mira Kestrel\n    kind: celebrity\n    synonyms: Kess\n"
        "  - {name: Varela, kind: style, preserve: [Okonkwo]}\n"
    )
    concepts = load_concepts(tmp_path / "c.yaml")
    assert [c.name for c in concepts] == ["circle", "Mira Kestrel", "Varela"]
    assert concepts[1].synonyms == ("Kess",) and concepts[2].preserve == ("Okonkwo",)
    (tmp_path / "c.json").write_text('["square", {"name": "star"}]')
    assert [c.name for c in load_concepts(tmp_path / "c.json")] == ["square", "star"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("concepts: [", "not valid"),
        ("concepts: 3", "must hold a list"),
        ("- {name: a, colour: red}", "unknown field"),
        ("- {kind: object}", "missing 'name'"),
        ("- 3", "expected a name"),
    ],
)
def test_bad_concept_files(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConceptError, match=message):
        load_concepts(tmp_path / "bad.yaml")
    with pytest.raises(ConceptError, match="does not exist"):
        load_concepts(tmp_path / "missing.yaml")

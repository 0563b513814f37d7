"""ToyWorld as a prompt world: names, kinds, related concepts, suites."""

import pytest

from ace_erasure.concepts import Concept
from ace_erasure.errors import ConceptError
from ace_erasure.toyworld.vocab import vocabulary
from ace_erasure.toyworld.world import ToyWorld

WORLD = ToyWorld()


def test_names_and_synonyms_resolve_to_canonical_concepts_of_their_kind():
    assert WORLD.resolve("circle") == Concept("circle", kind="object")
    assert WORLD.resolve("disc").name == "circle"
    kess = WORLD.resolve("Kess")  # a nickname: a celebrity, mapped to "a person"
    assert (kess.name, kess.kind, kess.anchor) == ("Mira Kestrel", "celebrity", "a person")
    assert WORLD.resolve("Varela").kind == "style"
    assert WORLD.resolve("hazard").kind == "explicit"
    given = Concept("circle", synonyms=("disc",))
    assert WORLD.resolve(given) is given
    with pytest.raises(ConceptError, match="not in ToyWorld's vocabulary"):
        WORLD.resolve("dragon")
    with pytest.raises(ConceptError, match="unknown: monet"):
        WORLD.resolve(Concept("Varela", kind="style", preserve=("Monet",)))


def test_related_concepts_are_the_rest_of_the_family():
    related = WORLD.related(Concept("circle"))
    assert len(related) == 9 and "circle" not in related and "hexagon" in related
    assert WORLD.related(Concept("hazard", kind="explicit")) == []


@pytest.mark.parametrize("name", ["circle", "Varela", "Mira Kestrel", "hazard"])
def test_every_family_has_a_suite(name):
    suite = WORLD.suite(WORLD.resolve(name), 4, 2, seed=0)
    assert len(suite.named) == 4 and len(suite.synonyms) == 4 and suite.others
    assert all(p.concept == name for p in suite.named + suite.synonyms)
    assert all(p.concept != name for p in suite.others)
    assert all(p.prompt.startswith("a picture of") for p in suite.named + suite.others)
    assert all(p.head == "colour" for p in suite.attributes)
    assert suite.probes() == WORLD.suite(WORLD.resolve(name), 4, 2, seed=0).probes()


def test_colour_probes_are_counted_once():
    suite = WORLD.suite(WORLD.resolve("circle"), 4, 2, seed=0)
    assert len(suite.attributes) == 4 + 9 * 2  # one per shape prompt


def test_no_suite_for_a_colour():
    assert vocabulary().family_of("red") == "colours"
    with pytest.raises(ConceptError, match="no evaluation suite"):
        WORLD.suite(Concept("red"), 4, 2, seed=0)

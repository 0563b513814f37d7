from ace_erasure.concepts import Concept
from ace_erasure.prompts import GenericWorld, attribute_templates, general_prompts, related_pairs
from ace_erasure.toyworld.world import ToyWorld

TOY, GENERIC = ToyWorld(), GenericWorld()


def test_related_pairs_keep_the_family_but_never_an_erased_name():
    concepts = [Concept("circle", synonyms=("disc",)), Concept("square")]
    pairs = related_pairs(concepts, TOY)
    names = {p.through.split()[-1] for p in pairs}
    assert {"triangle", "star", "arrow"} <= names
    assert not names & {"circle", "square", "disc"}
    assert all(p.text.startswith(p.through) for p in pairs)


def test_preserve_list_is_used_off_toyworld_too():
    pairs = related_pairs([Concept("Van Gogh", kind="style", preserve=("Monet",))], GENERIC)
    assert pairs and all("Monet" in p.text for p in pairs)
    assert related_pairs([Concept("cat")], GENERIC) == []


def test_general_prompts_drop_captions_mentioning_erased_names():
    general = general_prompts([Concept("dog")], GENERIC)
    assert general and not any(" dog " in f" {p} " for p in general)
    toy = general_prompts([Concept("circle")], TOY, n_general=50)
    assert len(toy) > 20 and not any("circle" in p for p in toy)


def test_attribute_templates_add_the_worlds_colours_a_template_does_not_name():
    circle = TOY.resolve("circle")
    templates = attribute_templates(circle, TOY)
    assert templates[: len(circle.templates)] == circle.templates
    assert templates[len(circle.templates) :] == ("a purple {}", "an orange {}", "a cyan {}")
    assert attribute_templates(TOY.resolve("Varela"), TOY) == TOY.resolve("Varela").templates

    class Bare(GenericWorld):  # a world without attribute words: the kind's templates
        attributes = None

    assert attribute_templates(Concept("car"), Bare()) == Concept("car").templates
    assert "a pink {}" in attribute_templates(Concept("car"), GENERIC)

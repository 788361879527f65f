"""What docs/demo.md says about the task: the split, the references, the test inputs, the pretraining text."""
from minilora import data
from minilora.demo import pretraining_text, task_splits
from minilora.data.tasks import e2e_constant_output


def fields(example):
    name, *rest = example.prompt[:-1].split("|")
    return name, set(rest)


def test_the_split_uses_every_input_and_each_has_one_to_three_references():
    splits = task_splits()
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (806, 200, 300)
    counts = {len(e.references) for part in (splits.train, splits.validation, splits.test) for e in part}
    assert counts == {1, 2, 3}


def test_test_inputs_are_new_combinations_of_names_and_attributes_seen_in_training():
    splits = task_splits()
    names = {fields(e)[0] for e in splits.train}
    attributes = set().union(*(fields(e)[1] for e in splits.train))
    for example in splits.validation + splits.test:
        name, values = fields(example)
        assert name in names and values <= attributes, example


def test_pretraining_text_holds_every_training_target_and_no_other_input():
    splits = task_splits()
    text = pretraining_text(0)
    lines = set(text.splitlines())
    for example in splits.train:
        assert any(line.endswith(": " + example.references[0]) for line in lines if line.startswith(fields(example)[0] + " ("))
    assert "|" not in text and "=" not in text  # the task's notation never appears
    corpus_only = pretraining_text(0, task_text=False)
    assert not any(reference in corpus_only for e in splits.train[:50] for reference in e.references if "(" not in reference)


def test_constant_output_names_the_restaurant():
    example = data.Example("Cotto|food[Thai]|area[river]=", ("Cotto serves Thai food by the river.",))
    assert e2e_constant_output(example) == "Cotto is a place."

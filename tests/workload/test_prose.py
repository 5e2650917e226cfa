"""The prose corpus: read from the Python installation, only flowing English, recorded by digest."""

import platform
import re

from depthkv.workload.prose import RESERVED_PHRASES, corpus_from_topics, is_prose_sentence, prose_corpus

TOPICS = {
    "b-topic": """Assignment statements
*********************

Assignment statements are used to bind names to values. They modify attributes of
mutable objects.

   assignment_stmt ::= (target_list "=")+ (starred_expression | yield_expression)
   target_list     ::= target ("," target)* [","]

* If the target is an identifier, the name is bound to the object in
  the current local namespace.

  Note: If the object is a class instance and the attribute occurs on both sides
  of the operator, the attribute may not be the same one.

   >>> x = [0, 1]
   >>> x
   [0, 1]

+----------+-------------------+
| Operation | Result           |
+----------+-------------------+

   While the program runs the loop keeps on reading lines.
       Each line that it reads is then printed on the screen.

Changed in version 3.8: Something changed here for good reasons.
A dictionary uses the "__hash__()" method of every key it stores here.
Call "f(x)" to see what happens to the value you pass in.
One of the special magic numbers for nothing is stated in this sentence.
Assignment statements are used to bind names to values.
""",
    "a-topic": """The first topic comes first in the corpus because topics are sorted.""",
}


def test_extraction_keeps_flowing_prose_only():
    corpus = corpus_from_topics(TOPICS, "3.0.0")
    assert corpus.sentences == (
        "The first topic comes first in the corpus because topics are sorted.",
        "Assignment statements are used to bind names to values.",
        "They modify attributes of mutable objects.",
        "If the target is an identifier, the name is bound to the object in the current local namespace.",
        "Note: If the object is a class instance and the attribute occurs on both sides of the "
        "operator, the attribute may not be the same one.",
        'A dictionary uses the "__hash__()" method of every key it stores here.',
    )
    # Sentences of one paragraph share its number, others differ; the repeated sentence is kept once.
    numbers = corpus.paragraphs
    assert numbers == tuple(sorted(numbers)) and numbers[1] == numbers[2] and len(set(numbers)) == 5
    assert corpus.source["python"] == "3.0.0" and corpus.source["sentences"] == 6
    assert corpus_from_topics(TOPICS, "3.0.0") == corpus


def test_digest_follows_the_text():
    digest = corpus_from_topics(TOPICS, "3.0.0").source["sha256"]
    changed = {**TOPICS, "a-topic": TOPICS["a-topic"].replace("first topic", "opening topic")}
    assert corpus_from_topics(changed, "3.0.0").source["sha256"] != digest
    assert corpus_from_topics(TOPICS, "3.0.1").source["sha256"] == digest  # the text, not the label


def test_sentence_filter():
    assert is_prose_sentence("A frame contains some administrative information used for debugging.")
    assert is_prose_sentence('It is a "SyntaxError" to use an "async for" statement outside a coroutine.')
    for bad in (
        "Values of n less than zero are treated as 0 in this case.",  # a digit
        "Use the x = y form of assignment in these statements.",  # code characters
        "The result of calling sys.exit here is the end of the program.",  # a dotted name
        "Too short to count.",
        "lowercase start of a sentence is not a sentence start here.",
        "The colon introduces a code example that follows here:",
        "Each of these people works at the same desk in the office.",  # a reserved phrase
        "Some special magic numbers are hidden in the text of this sentence.",
        "The var statement of another language does not exist in this one.",
        "The café serves coffee to everyone who comes in the morning.",  # not ASCII
        'The statement "pairs = zip(a, b)" builds pairs of all the items.',  # code in quotes
    ):
        assert not is_prose_sentence(bad), bad


def test_installed_corpus():
    corpus = prose_corpus()
    assert corpus is prose_corpus()  # read once
    assert (
        corpus.source["name"] == "pydoc_data.topics" and corpus.source["python"] == platform.python_version()
    )
    assert len(corpus) > 500 and corpus.source["characters"] > 50_000
    assert len(set(corpus.sentences)) == len(corpus)
    for sentence in corpus.sentences:
        assert is_prose_sentence(sentence)
        assert not re.search(r"\d", sentence)
        lowered = sentence.lower()
        assert not any(phrase in lowered for phrase in RESERVED_PHRASES if " " in phrase)
        assert not re.search(r"\bvar\b", lowered)

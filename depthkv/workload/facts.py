"""What the natural-text tasks write: each task's opening instruction, the fact sentences hidden
in the prose, and the questions, which end with an answer prefix so that a completion model
answers at once (as in RULER).

- needle tasks: ``One of the special magic numbers for quiet-harbor is: 1948774.``; the question
  ends with ``The special magic number for quiet-harbor is``;
- multi-hop: ``Ada Hartley works at Northvale Robotics.`` and ``Northvale Robotics is located in
  Lisbon.``; the question ends with ``Ada Hartley works in the city of``;
- variables: ``VAR QPEXR = 12345.`` and ``VAR SGTAB = VAR QPEXR.``; the question ends with
  ``... 2 variables are assigned the value 12345, they are:``.

The context is the instruction, a blank line, then the prose with the facts inside it; it has no
trailing newline. Every question starts with ``"\\n\\n"`` and ends without a space: the model's
continuation (``" 1948774."``) is scored by the ``"contains"`` scorer against the bare answer
(``"1948774"``).
"""

from __future__ import annotations

NEEDLE_INSTRUCTION = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize them. "
    "I will quiz you about the numbers afterwards."
)
HOPS_INSTRUCTION = (
    "The following text mentions where some people work and in which city some companies are. "
    "Read it carefully. I will quiz you about them afterwards."
)
VARIABLES_INSTRUCTION = (
    "Memorize and track the chains of variable assignments hidden in the following text. "
    "I will quiz you about them afterwards."
)


def needle_sentence(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


def needle_question(key: str) -> str:
    return (
        f"\n\nQuestion: What is the special magic number for {key} mentioned in the text above?"
        f"\nAnswer: The special magic number for {key} is"
    )


def works_at_sentence(person: str, company: str) -> str:
    return f"{person} works at {company}."


def located_in_sentence(company: str, city: str) -> str:
    return f"{company} is located in {city}."


def city_question(person: str) -> str:
    return f"\n\nQuestion: In which city does {person} work?\nAnswer: {person} works in the city of"


def assignment_sentence(name: str, source: str) -> str:
    """``VAR name = 12345.`` for a number, ``VAR name = VAR other.`` for a variable."""
    return f"VAR {name} = {source if source.isdigit() else 'VAR ' + source}."


def holders_question(value: str, count: int) -> str:
    return (
        f"\n\nQuestion: Find all variables that are assigned the value {value} in the text above."
        f"\nAnswer: According to the chains of variable assignments in the text above, {count} "
        f"variables are assigned the value {value}, they are:"
    )

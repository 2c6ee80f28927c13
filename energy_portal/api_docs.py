"""OpenAPI descriptions of a model viewset's operations, each on its own and each saying who may
use it, so the docs at `/api/v1/docs/` tell every reader what they may do."""

from drf_spectacular.utils import extend_schema, extend_schema_view

OPERATORS_AND_STAFF = "Operators and staff only."


def crud_docs(
    *,
    noun: str,
    plural: str,
    readers: str,
    writers: str,
    lookup: str = "id",
    notes: dict[str, str] | None = None,
    own: tuple[str, ...] = (),
):
    """`extend_schema_view` for list, retrieve, create, update, partial_update and destroy:
    what each does, `notes[action]` where it has more to say, then who may use it (`readers`
    for the reads, `writers` for the rest). Actions in `own` are described on their methods."""
    notes = notes or {}

    def doc(action: str, summary: str, does: str, who: str):
        text = " ".join(part for part in (does, notes.get(action, ""), who) if part)
        return extend_schema(summary=summary, description=text)

    docs = {
        "list": doc(
            "list",
            f"List {plural}",
            f"The {plural} the caller may see, filtered and ordered as asked, a page at a time.",
            readers,
        ),
        "retrieve": doc(
            "retrieve",
            f"One {noun}",
            f"The {noun} of this {lookup}; any other answers 404, as one that does not exist.",
            readers,
        ),
        "create": doc("create", f"Add a {noun}", f"Add a {noun}.", writers),
        "update": doc(
            "update", f"Replace a {noun}", f"Replace all of the {noun}'s fields.", writers
        ),
        "partial_update": doc(
            "partial_update",
            f"Change a {noun}",
            f"Change the {noun}'s fields given, keep the others.",
            writers,
        ),
        "destroy": doc("destroy", f"Delete a {noun}", f"Delete the {noun}.", writers),
    }
    return extend_schema_view(**{action: d for action, d in docs.items() if action not in own})

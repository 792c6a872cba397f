"""Version labels (`version_labels { key: "stable" value: 3 }`): which label may point at which version.

The rules are ServerCore::UpdateModelVersionLabelMap's (tensorflow_serving/model_servers/server_core.cc), run on
every config load BEFORE the new model list is applied:

  * a label may only point at a version that is AVAILABLE right now, so moving `stable` to a version that is
    still loading (or absent) is refused and the whole reload is rejected: nothing changes, not even the
    model list (the server keeps the previous labels and versions and logs the error);
  * `--allow_version_labels_for_unavailable_models` lifts that for labels that are new or keep their version,
    never for an existing label moved to another version, "to ensure that during version swaps, the server
    does not prematurely assign the label to the new version" (serving_config.md). A config that names labels
    at start-up needs this flag, because at start-up no version is available yet;
  * the label map is replaced as a whole, so a label missing from the new config is gone.

A request's label is resolved to a version through this map only (ServableRequestFromModelSpec); a label the map
does not know is 400 "Unrecognized servable version label: L", a known label whose version is not loaded is 404
"Servable not found for request: Specific(NAME, V)".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from serving.json_tensor import ServingError

LabelMap = dict[str, dict[str, int]]


def build_label_map(
    labels_by_model: Iterable[tuple[str, Mapping[str, int]]],
    available: Mapping[str, set[int]],
    current: LabelMap,
    *,
    allow_unavailable: bool = False,
) -> LabelMap:
    """The new model -> {label: version} map, or ServingError FAILED_PRECONDITION for a label it may not set.

    Args:
      labels_by_model: (model name, {label: version}) per configured model, in config order.
      available: model name -> versions AVAILABLE now.
      current: the label map in force (consulted only with `allow_unavailable`).
      allow_unavailable: --allow_version_labels_for_unavailable_models.

    Example:
      >>> build_label_map([("m", {"stable": 1})], {"m": {1, 2}}, {})
      {'m': {'stable': 1}}
    """
    new: LabelMap = {}
    for name, labels in labels_by_model:
        for label, version in labels.items():
            moved = current.get(name, {}).get(label, version) != version
            if not (allow_unavailable and not moved) and version not in available.get(name, set()):
                raise ServingError(
                    "FAILED_PRECONDITION",
                    f"Request to assign label to version {version} of model {name}, which is not currently "
                    "available for inference",
                )
            new.setdefault(name, {})[label] = version
    return new


def version_for_label(label_map: LabelMap, name: str, label: str) -> int:
    """The version `label` names for model `name` (GetModelVersionForLabel), else a 400 ServingError."""
    version = label_map.get(name, {}).get(label)
    if version is None:
        raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
    return version

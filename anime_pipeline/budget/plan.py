"""The compute plan as a typed document: :class:`ComputePlan` and its nested models.

``build_compute_plan`` returns a :class:`ComputePlan`; ``plan.model_dump(mode="json")`` (or
``model_dump_json``) is the ``shot_compute_budget_plan`` JSON written to storage and
``ComputePlan.model_validate_json(...)`` reads it back. The JSON Schema committed next to
this module (``compute_plan.schema.json``) is generated from :class:`ComputePlan` (see
:mod:`anime_pipeline.budget.schema`).

The planner builds the (large) per-shot part with :func:`trusted_constructor`, without
validation: :func:`anime_pipeline.budget.validate_plan` validates a plan fully, and every
model here revalidates an instance it is given (``revalidate_instances="always"``).
Nested models ignore unknown keys; :class:`ComputePlan` keeps them (``extra="allow"``).
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Final, Literal, Self, TypeVar, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    model_validator,
)

from anime_pipeline.budget.ladders import DegradeAction, DegradeLadderStep
from anime_pipeline.domain.contracts import RESOLUTION_TIERS
from anime_pipeline.domain.records import PolicyRecord

PLAN_VERSION: Final = "1.0"

Tier = Literal["240p", "360p", "480p", "540p", "720p", "1080p", "1440p", "2160p"]
assert list(get_args(Tier)) == list(RESOLUTION_TIERS), "Tier must list RESOLUTION_TIERS"

PlanStatus = Literal["compute_plan_ready", "rebalance_required", "failed"]
PlanState = Literal["INIT", "ANALYZING_COMPLEXITY", "ALLOCATING_BUDGET", "ASSIGNING_BACKENDS",
                    "REBALANCING_SLA", "COMPUTE_PLAN_READY", "FAILED"]
Mode = Literal["preview", "standard", "final"]
Profile = Literal["LOW", "MEDIUM", "HIGH"]
ProfileSource = Literal["creative_control", "resources"]
Complexity = Literal["low", "medium", "high"]
RenderPriority = Literal["critical", "high", "normal", "low"]
StageName = Literal["preview", "final"]
CostSource = Literal["default", "history_exact", "history_type", "history_backend"]
SlaReason = Literal["preview_mode", "congested_queue", "tight_deadline"]

NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
BackendName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]
ShotId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]


def _unique(items: list[str]) -> list[str]:
    if len(set(items)) != len(items):
        dup = sorted(x for x, k in Counter(items).items() if k > 1)
        raise ValueError(f"items must be unique, repeated: {dup[:5]}")
    return items


UniqueStrs = Annotated[list[str], AfterValidator(_unique),
                       Field(json_schema_extra={"uniqueItems": True})]

M = TypeVar("M", bound=BaseModel)


class PlanModel(BaseModel):
    """Base of the plan's nested models: frozen, unknown keys ignored, an instance passed
    to ``model_validate`` is validated again (so a constructed plan can be checked)."""

    model_config = ConfigDict(frozen=True, extra="ignore", revalidate_instances="always")


def trusted_constructor(cls: type[M]) -> Callable[[dict[str, Any]], M]:
    """A fast constructor of ``cls`` from a dict holding *every* field, already of its
    declared type (what :meth:`BaseModel.model_construct` does, without its per-call
    overhead: the planner makes a few hundred thousand candidates). Nothing is validated;
    the dict becomes the instance's ``__dict__``. Not for models with private attributes
    or ``model_post_init`` (use ``model_construct``)."""
    if cls.__private_attributes__ or cls.__pydantic_post_init__:
        raise TypeError(f"{cls.__name__} needs model_construct")
    fields_set = set(cls.model_fields)  # shared: pydantic copies it before changing it
    allow = cls.model_config.get("extra") == "allow"
    new = object.__new__
    setattr_ = object.__setattr__

    def make(values: dict[str, Any]) -> M:
        m = new(cls)
        setattr_(m, "__dict__", values)
        setattr_(m, "__pydantic_fields_set__", fields_set)
        setattr_(m, "__pydantic_extra__", {} if allow else None)
        setattr_(m, "__pydantic_private__", None)
        return m

    return make


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a plan's models are made or validated.

    They hold no reference cycles (reference counting frees them), and at 10,000 shots
    (~300,000 models) the collector's passes over the growing young generations cost as
    much as the work itself. On the way out the objects made meanwhile are moved to the
    oldest generation (``freeze`` + ``unfreeze``: two list splices), so the next young
    collection does not walk them all at once; skipped when the process froze objects
    itself (``gc.get_freeze_count()``), whose frozen set must stay frozen."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


# ---------------------------------------------------------------------------- per shot


class Candidate(PlanModel):
    """One candidate tier of a shot: generation fps x resolution x backend."""

    id: str
    fps: Positive
    resolution: Tier
    backend: BackendName
    gpu_sec: NonNegative
    value: float
    cost_source: CostSource


class Segments(PlanModel):
    max_ms: Annotated[int, Field(gt=0)] | None  # None: the shot renders in one segment
    count: Annotated[int, Field(ge=1)]


class EstimatedCost(PlanModel):
    gpu_sec: NonNegative  # charged to the budget: preview + final render when staged
    render_gpu_sec: NonNegative
    preview_gpu_sec: NonNegative
    source: CostSource


class Floor(PlanModel):
    fps: Positive
    resolution: Tier


class Signals(PlanModel):
    """What CB1 read of the shot."""

    event_density: NonNegative
    peak_energy: Annotated[float, Field(ge=0, le=1)]
    in_audio_manifest: bool
    duration_ms: Annotated[int, Field(gt=0)]
    shot_type: str


class ShotPlan(PlanModel):
    """The plan of one shot: what to render, how, and what it costs."""

    shot_id: ShotId
    complexity: Complexity
    complexity_score: NonNegative
    critical: bool
    degradable: bool
    opening: bool
    render_priority: RenderPriority
    target_fps: Positive
    target_resolution: Tier
    segment_policy: Annotated[str, StringConstraints(
        pattern=r"^(single_segment|(microshot_)?split_if_duration_gt_[0-9]+ms)$")]
    segments: Segments
    backend_preference: Annotated[list[BackendName], Field(
        min_length=1, json_schema_extra={"uniqueItems": True}), AfterValidator(_unique)]
    retry_budget: Annotated[int, Field(ge=0, le=10)]
    degrade_ladder_profile: Annotated[str, StringConstraints(pattern=r"^DL_[A-Z0-9_]+$")]
    estimated_cost: EstimatedCost
    floor: Floor
    stages: list[StageName]  # the stages that render this shot
    preview: Candidate | None = None  # the preview tier, when a later final render follows
    signals: Signals
    candidates: Annotated[list[Candidate], Field(min_length=1)]  # Pareto front, by cost
    chosen: Candidate

    @property
    def backend(self) -> str:
        """The backend of the chosen tier (the first of ``backend_preference`` for a
        generative shot)."""
        return self.chosen.backend

    @property
    def target_height(self) -> int:
        return RESOLUTION_TIERS[self.target_resolution]


# ---------------------------------------------------------------------------- plan parts


class FeatureFlags(PlanModel):
    enable_shot_level_budget: bool
    enable_dynamic_fps: bool
    enable_backend_priority_assignment: bool


class Baseline(PlanModel):
    fps: Positive
    resolution: Tier
    max_resolution: Tier
    max_fps: Positive


class BudgetSummary(PlanModel):
    max_gpu_minutes: Annotated[float, Field(gt=0)] | None
    estimated_gpu_minutes: NonNegative
    max_gpu_sec: NonNegative | None = None
    estimated_gpu_sec: NonNegative = 0.0
    within_budget: bool | None = None
    budget_capped: bool = False


class AllocationReport(PlanModel):
    """What the knapsack did (``allocation`` in the plan)."""

    objective: float
    upper_bound: float | None = None
    budget_used: NonNegative
    budget_gpu_sec: float | None = None
    min_cost_gpu_sec: NonNegative = 0.0
    solver: Annotated[str, Field(min_length=1)]
    time_ms: NonNegative
    planning_time_ms: NonNegative = 0.0
    feasible: bool = False
    shots: Annotated[int, Field(ge=0)] = 0
    candidates_considered: Annotated[int, Field(ge=0)] = 0
    value_model: str | None = None


class Stage(PlanModel):
    """One delivery stage: its shots in render order and when it is estimated to finish."""

    name: StageName
    shots: UniqueStrs
    estimated_gpu_sec: NonNegative
    estimated_finish: AwareDatetime


class SlaReport(PlanModel):
    """CB4's view of the deadline and the queue (``sla`` in the plan)."""

    deadline: AwareDatetime | None
    now: AwareDatetime
    reasons: list[SlaReason]  # why the plan is staged; empty: one final stage
    staged: bool
    queue_depth: Annotated[int, Field(ge=0)]
    congested: bool
    queue_delay_sec: NonNegative
    parallelism: Annotated[int, Field(ge=1)]
    time_capacity_gpu_sec: NonNegative | None
    estimated_finish: AwareDatetime
    meets_deadline: bool | None
    preview_meets_deadline: bool | None


class PreviewOnlyTier(PlanModel):
    fps: Positive
    resolution: Tier


class RebalanceProposal(PlanModel):
    """When even the cheapest tier of every shot exceeds the budget."""

    reason: str
    max_gpu_minutes: NonNegative
    required_gpu_minutes: NonNegative
    missing_gpu_minutes: NonNegative
    preview_only_shots: UniqueStrs
    preview_only_tier: PreviewOnlyTier
    missing_after_preview_only_gpu_minutes: NonNegative
    suggested_max_gpu_minutes: NonNegative


def _absent(value: object) -> bool:
    return value is None


class LadderStepSpec(PlanModel):
    """A degrade ladder step as embedded in the plan (``None`` parameters are left out)."""

    action: DegradeAction
    fps_factor: Annotated[float, Field(gt=0, lt=1)] | None = Field(default=None,
                                                                   exclude_if=_absent)
    resolution: Tier | None = Field(default=None, exclude_if=_absent)

    @model_validator(mode="after")
    def _consistent(self) -> LadderStepSpec:
        self.to_step()  # raises ValueError for a parameter the action does not take
        return self

    def to_step(self) -> DegradeLadderStep:
        return DegradeLadderStep(self.action, self.fps_factor, self.resolution)


class BackendCostSpec(PlanModel):
    sec_per_frame_720p: NonNegative
    overhead_sec: NonNegative


class CostModel(PlanModel):
    history_records: Annotated[int, Field(ge=0)]
    default_backend_costs: dict[str, BackendCostSpec]


# ---------------------------------------------------------------------------- the plan

_CONDITIONS: list[Any] = [
    {"if": {"properties": {"status": {"const": "rebalance_required"}}},
     "then": {"required": ["rebalance_proposal"],
              "properties": {"rebalance_proposal": {"type": "object"}}}},
    {"if": {"properties": {"status": {"const": "failed"}}},
     "then": {"required": ["failure_reason"],
              "properties": {"failure_reason": {"type": "string"}}}},
]


class ComputePlan(PlanModel):
    """``shot_compute_budget_plan``: the compute plan of one episode.

    A failed plan (``status == "failed"``) has no shots and no stages, ``failure_reason``
    set, and ``None`` for the parts that need a resolved plan (``mode``, ``baseline``,
    ``sla``, ...).
    """

    model_config = ConfigDict(
        extra="allow",
        title="shot_compute_budget_plan",
        json_schema_extra={"allOf": _CONDITIONS},
    )

    version: Literal["1.0"]
    status: PlanStatus
    episode_key: str | None = None
    mode: Mode | None = None
    global_profile: Profile | None
    global_profile_source: ProfileSource | None = None
    feature_flags: FeatureFlags | None = None
    baseline: Baseline | None = None
    budget_summary: BudgetSummary
    shots: list[ShotPlan]  # in episode order, every shot once
    allocation: AllocationReport
    stages: list[Stage]  # [final], or [preview, final] when staged
    sla: SlaReport | None = None
    states: Annotated[list[PlanState], Field(min_length=1)]
    rebalance_proposal: RebalanceProposal | None = None
    degrade_ladders: dict[str, Annotated[list[LadderStepSpec], Field(min_length=1)]] = Field(
        default_factory=dict)
    cost_model: CostModel | None = None
    warnings: list[str] = Field(default_factory=list)
    failure_reason: str | None = None
    generated_at: AwareDatetime | None = None
    runtime_policy: PolicyRecord | None = None  # the execution policy it was made under

    _index: dict[str, int] = PrivateAttr(default_factory=dict)  # shot id -> position

    def model_post_init(self, context: Any, /) -> None:
        self._index = {s.shot_id: i for i, s in enumerate(self.shots)}

    def model_copy(self, *, update: Mapping[str, Any] | None = None,
                   deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        if update and "shots" in update:
            copied.model_post_init(None)  # index the new shots
        return copied

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """As :meth:`BaseModel.model_validate`, with :func:`gc_paused`."""
        with gc_paused():
            return super().model_validate(obj, **kwargs)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        """As :meth:`BaseModel.model_validate_json`, with :func:`gc_paused`."""
        with gc_paused():
            return super().model_validate_json(json_data, **kwargs)

    @model_validator(mode="after")
    def _status_parts(self) -> ComputePlan:
        if self.status == "rebalance_required" and self.rebalance_proposal is None:
            raise ValueError("status rebalance_required needs a rebalance_proposal")
        if self.status == "failed" and self.failure_reason is None:
            raise ValueError("status failed needs a failure_reason")
        return self

    # ------------------------------------------------------------------ accessors

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def shot_ids(self) -> list[str]:
        """Every planned shot id, in episode order."""
        return [s.shot_id for s in self.shots]

    def shot(self, shot_id: str) -> ShotPlan:
        """The plan of ``shot_id``; ``KeyError`` when the plan has no such shot."""
        i = self._index.get(shot_id)
        if i is not None and i < len(self.shots) and self.shots[i].shot_id == shot_id:
            return self.shots[i]
        # not where the index says (the shots list was changed in place): look it up
        for s in self.shots:
            if s.shot_id == shot_id:
                return s
        raise KeyError(f"shot {shot_id!r} is not in the compute plan")

    def stage(self, name: str) -> Stage | None:
        """The stage called ``name`` (``preview`` or ``final``), or None."""
        return next((st for st in self.stages if st.name == name), None)

    def ladder(self, shot_id: str) -> list[DegradeLadderStep]:
        """The degrade ladder of ``shot_id``, as embedded in this plan."""
        name = self.shot(shot_id).degrade_ladder_profile
        try:
            return [step.to_step() for step in self.degrade_ladders[name]]
        except KeyError:
            raise KeyError(f"degrade ladder {name!r} is not in the compute plan") from None

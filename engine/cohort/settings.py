"""What a cohort's results depend on besides each case's inputs: a store is only resumed with the same settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..recurrence import Criteria
from ..uncertainty import Uncertainty
from ..voxelize import SamplingOptions


@dataclass(frozen=True)
class RunSettings:
    """The metrics, targets, thresholds and sampling of a cohort run, and the dose step of its stored DVHs.

    Parameters
    ----------
    metrics : tuple of str
        Extra metrics of Vr (beside V95%, D95, D98, D100, Dmean and Dmax).
    target_metrics : tuple of str
        ``ROI:METRIC`` of planning ROIs, e.g. ``("GTV:volume", "CTV60:D98")``.
    targets : tuple of str, optional
        The targets of the point-of-origin method (default: every GTV, CTV and PTV).
    criteria : Criteria
        The isodose level and the class thresholds.
    options : SamplingOptions
        How finely structures are sampled.
    dvh_step_gy : float
        The dose step of the stored cumulative DVHs, Gy.
    relative_dose_reference_gy : float, optional
        The dose (Gy) of 100% for RTDOSE files in relative units (refused without it).
    allow_mismatch : bool
        Go on, with a warning, with cases whose files say they do not belong together (another patient's, a plan
        the dose does not reference); by default such a case fails.
    require_targets : bool
        Fail a case whose target metrics name an ROI its planning set lacks; by default the case is classified,
        those metrics null, with a warning.
    uncertainty : Uncertainty, optional
        Classify each case under registration uncertainty too (each case's draws from the seed and its id).

    The last two decide which cases fail, not the numbers of the others, so they are not part of the settings a
    store keeps (and a store may be resumed with other choices of them).

    Examples
    --------
    >>> RunSettings(target_metrics=("CTV60:D98",)).as_dict()["target_metrics"]
    ['CTV60:D98']
    """

    metrics: tuple[str, ...] = ()
    target_metrics: tuple[str, ...] = ()
    targets: tuple[str, ...] | None = None
    criteria: Criteria = field(default_factory=Criteria)
    options: SamplingOptions = field(default_factory=SamplingOptions)
    dvh_step_gy: float = 0.1
    relative_dose_reference_gy: float | None = None
    allow_mismatch: bool = False
    require_targets: bool = False
    uncertainty: Uncertainty | None = None

    def as_dict(self) -> dict:
        """The settings as the store keeps them (JSON values)."""
        return {
            "metrics": list(self.metrics),
            "target_metrics": list(self.target_metrics),
            "targets": None if self.targets is None else list(self.targets),
            "criteria": asdict(self.criteria),
            "sampling": sampling_settings(self.options),
            "dvh_step_gy": self.dvh_step_gy,
            **(
                {}
                if self.relative_dose_reference_gy is None
                else {"relative_dose_reference_gy": self.relative_dose_reference_gy}
            ),
            **({} if self.uncertainty is None else {"uncertainty": self.uncertainty.as_dict()}),
        }


def sampling_settings(options: SamplingOptions) -> dict:
    """The sampling options as a store keeps them: ``extremes`` only where it is not the default, so that stores
    written before the option existed resume."""
    values = asdict(options)
    if values["extremes"] == SamplingOptions().extremes:
        del values["extremes"]
    return values

"""Tests for rap/metrics/pdm_inputs.py: ObjectTracks is object-major (N, S) like AgentTracks."""

from __future__ import annotations

import numpy as np
import pytest

from rap.metrics.pdm_inputs import ObjectKind, ObjectTracks


def _tracks(n: int = 2, s: int = 41, **override) -> ObjectTracks:
    t = np.arange(s) * 0.1
    fields = {
        "ids": np.arange(n),
        "kinds": np.full(n, int(ObjectKind.VEHICLE)),
        "x": np.arange(n)[:, None] * 10.0 + 2.0 * t[None, :],
        "y": np.zeros((n, s)),
        "heading": np.zeros((n, s)),
        "vx": np.full((n, s), 2.0),
        "vy": np.zeros((n, s)),
        "length": np.full(n, 4.5),
        "width": np.full(n, 2.0),
        "valid": np.ones((n, s), dtype=bool),
    }
    fields.update(override)
    return ObjectTracks(**fields)


def test_object_tracks_are_object_major():
    tr = _tracks(n=3, s=45)
    assert len(tr) == 3 and tr.num_steps == 45
    assert tr.x.shape == tr.valid.shape == (3, 45)
    assert tr.corners().shape == (3, 45, 4, 2)
    np.testing.assert_allclose(tr.corners()[1, 0].mean(axis=0), [10.0, 0.0])
    fc = tr.constant_velocity_forecast(50)
    assert fc.x.shape == (3, 50) and fc.num_steps == 50
    np.testing.assert_allclose(fc.x[:, 10], tr.x[:, 0] + 2.0)
    empty = ObjectTracks.empty(41)
    assert len(empty) == 0 and empty.num_steps == 41 and empty.x.shape == (0, 41)


def test_first_valid_speed_reads_each_objects_own_first_step():
    vx = np.zeros((2, 41))
    vx[0, 5:] = 3.0  # object 0 appears at step 5, moving
    valid = np.ones((2, 41), dtype=bool)
    valid[0, :5] = False
    np.testing.assert_allclose(_tracks(vx=vx, valid=valid).first_valid_speed(), [3.0, 0.0])


@pytest.mark.parametrize("name", ["x", "y", "heading", "vx", "vy"])
def test_step_major_arrays_are_rejected_naming_the_field(name):
    good = getattr(_tracks(), name)
    with pytest.raises(ValueError, match=rf"ObjectTracks\.{name}: expected shape \(2, .*\) \(num_objects, num_steps\) \(this looks transposed\), got \(41, 2\)"):
        _tracks(**{name: good.T})


def test_step_major_valid_is_rejected():
    with pytest.raises(ValueError, match=r"ObjectTracks\.valid: expected a \(2, 41\) bool array \(num_objects, num_steps\), got bool \(41, 2\)"):
        _tracks(valid=np.ones((41, 2), dtype=bool))


# Hostile polygons: a NaN or infinite vertex is refused, naming the field (and the lane).


def _bad_polygon(value: float, hole: bool = False):
    import shapely

    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if hole:
                return shapely.Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], holes=[[(1, 1), (value, 1), (2, 2)]])
            return shapely.Polygon([(0, 0), (value, 0), (1, 1)])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_polygon_vertices_are_refused_naming_the_field(scene_factory, value):
    import dataclasses

    import shapely

    scene = scene_factory()
    cases = [
        (dict(drivable_area=[shapely.box(0, 0, 1, 1), _bad_polygon(value)]), r"ScoringScene\.drivable_area: polygon 1 "),
        (dict(drivable_area=_bad_polygon(value, hole=True)), r"ScoringScene\.drivable_area: polygon 0 "),
        (dict(intersections=shapely.MultiPolygon([shapely.box(0, 0, 1, 1), _bad_polygon(value)])), r"ScoringScene\.intersections: polygon 1 "),
        (dict(lane_polygons={**scene.lane_polygons, 9: _bad_polygon(value)}), r"ScoringScene\.lane_polygons: lane 9 "),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message + "has a non-finite vertex"):
            dataclasses.replace(scene, **fields)

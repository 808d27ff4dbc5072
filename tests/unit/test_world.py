"""The procedural portrait world: determinism, exact edit regions, keypoints, pose drawing, pairs."""

import json

import numpy as np
import pytest

from portrait_edit.tasks import DIRECTIONS, TASKS
from portrait_edit.world import (
    KEYPOINT_NAMES,
    draw_pose,
    draw_pose_pair,
    edit_mask,
    identity_from_seed,
    make_face,
    make_pair,
    pair_from_meta,
    pose_keypoints,
    render,
    render_edit,
    sample_pose,
)
from portrait_edit.world.faces import FACE_EXPRESSIONS
from portrait_edit.world.pose import HEAD_UNIT, Pose

ARRAYS = ("src", "tgt", "gt", "edit_mask", "keypoints", "pose_image")
KP = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


def dilate(mask: np.ndarray) -> np.ndarray:
    """3 x 3 binary dilation (8-neighbourhood)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any(
        [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0
    )


def pixel(image: np.ndarray, keypoint: np.ndarray) -> np.ndarray:
    """Colour of the pixel containing a keypoint (pixel j covers [j, j + 1))."""
    return image[int(keypoint[1]), int(keypoint[0])].astype(int)


def count(image: np.ndarray, lo: tuple, hi: tuple) -> int:
    """Number of pixels with lo <= rgb <= hi per channel."""
    return int(np.all((image >= np.array(lo)) & (image <= np.array(hi)), axis=-1).sum())


# ---- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_different_seeds_differ():
    a, b = make_pair(11, "royal", jitter=0.3), make_pair(11, "royal", jitter=0.3)
    for name in ARRAYS:
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert a.meta == b.meta and a.prompts == b.prompts
    other = make_pair(12, "royal", jitter=0.3)
    assert a.src.tobytes() != other.src.tobytes()
    assert a.meta["identity"] != other.meta["identity"]


def test_seed_fixes_person_and_pose_across_directions():
    sources = {make_pair(4, d).src.tobytes() for d in DIRECTIONS}
    assert len(sources) == 1


def test_meta_is_json_and_rerenders_bit_for_bit():
    pair = make_pair(21, "santa", jitter=0.7)
    again = pair_from_meta(json.loads(json.dumps(pair.meta)))
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(again, name), getattr(pair, name), err_msg=name)
    assert pair.meta["seed"] == 21 and pair.meta["size"] == 64 and pair.meta["jitter"] == 0.7
    assert pair.meta["identity"] == identity_from_seed(pair.meta["identity_seed"]).to_dict()


# ---- exact edit region --------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_diff_is_inside_mask_and_mask_minus_diff_is_antialiased_border(direction):
    for seed in range(6):
        pair = make_pair(seed, direction)
        diff = np.any(pair.src != pair.gt, axis=-1)
        mask = pair.edit_mask
        assert diff.any(), "the edit must change the image"
        # 1. Pixels outside the region are bit-identical.
        assert not np.any(diff & ~mask)
        np.testing.assert_array_equal(pair.src[~mask], pair.gt[~mask])
        # 2. Region pixels that did not change lie on the region's anti-aliased rim: within one
        # pixel of a region pixel that touches the outside. A pixel or two may also sit inside, where
        # a replaced layer is painted over its old self in the same colour (e.g. eyebrows).
        extra = mask & ~diff
        rim = dilate(mask & dilate(~mask))
        assert np.sum(extra & ~rim) <= 2, (seed, np.argwhere(extra & ~rim))
        # Small expression regions (~100 px) are mostly rim: up to ~10% of them (shocked, 150 seeds).
        assert extra.sum() <= 0.12 * mask.sum(), (seed, extra.sum(), mask.sum())


def test_edit_region_also_exact_at_a_larger_size():
    for direction in ("sheep", "laughing"):
        src, tgt, mask = render_edit(identity_from_seed(3), Pose(0.5, 0.42, 8.0, 1.0), direction, 96)
        diff = np.any(src != tgt, axis=-1)
        assert not np.any(diff & ~mask)
        assert np.sum(mask & ~diff) <= 0.1 * mask.sum()


def test_edit_mask_function_matches_pair_and_render():
    pair = make_pair(8, "crying")
    identity, pose = identity_from_seed(8), sample_pose(np.random.default_rng([8, 1]))
    np.testing.assert_array_equal(edit_mask(identity, pose, "crying"), pair.edit_mask)
    np.testing.assert_array_equal(render(identity, pose), pair.src)
    np.testing.assert_array_equal(render(identity, pose, "crying"), pair.gt)


def test_expression_edits_stay_on_the_face_and_costumes_reach_the_body():
    for seed in range(4):
        for direction in TASKS["expression"]:
            pair = make_pair(seed, direction)
            unit = HEAD_UNIT * 64 * pair.meta["pose"]["scale"]
            nose = pair.keypoints[KP["nose"], :2]
            ys, xs = np.nonzero(pair.edit_mask)
            assert np.hypot(xs + 0.5 - nose[0], ys + 0.5 - nose[1]).max() < 1.1 * unit, (seed, direction)
        for direction in TASKS["costume"]:
            pair = make_pair(seed, direction)
            shoulders = pair.keypoints[[KP["r_shoulder"], KP["l_shoulder"]]]
            assert all(pair.edit_mask[int(y), int(x)] for x, y, v in shoulders if v), (seed, direction)
            head_top = int(pair.keypoints[KP["nose"], 1] - 1.3 * HEAD_UNIT * 64)
            assert pair.edit_mask[: max(head_top, 1)].any() or direction == "flower", (seed, direction)


def test_each_edit_shows_its_signature_colour():
    """Independent colour signatures a classifier can pick up at 64 x 64."""
    signatures = {
        "santa": ((170, 0, 0), (235, 70, 80)),  # red suit and hat
        "sheep": ((235, 235, 230), (255, 255, 255)),  # white fleece and hood
        "royal": ((200, 150, 20), (240, 200, 70)),  # gold robe and crown
        "flower": ((225, 120, 165), (250, 160, 200)),  # pink dress
    }
    for seed in range(4):
        for direction, (lo, hi) in signatures.items():
            pair = make_pair(seed, direction)
            assert count(pair.gt, lo, hi) > 250 and count(pair.src, lo, hi) < 20, (seed, direction)
        crying = make_pair(seed, "crying")
        tears = ((30, 120, 200), (110, 180, 255))
        region = crying.edit_mask
        assert count(crying.gt[region], *tears) >= 4 and count(crying.src[region], *tears) == 0
        laughing = make_pair(seed, "laughing")
        teeth = count(laughing.gt[laughing.edit_mask], (225, 225, 220), (255, 255, 255))
        assert teeth >= 2, seed


# ---- keypoints and pose drawing -----------------------------------------------------------------


def test_keypoints_sit_on_the_rendered_head_and_shoulders():
    for seed in range(8):
        pair, identity = make_pair(seed, "angry"), identity_from_seed(seed)
        kp, skin = pair.keypoints, np.array(identity.skin)
        assert kp.shape == (18, 3) and kp.dtype == np.float32
        # The head is always in frame; a shoulder may leave it when the head sits near a side.
        assert np.all(kp[[KP[n] for n in ("nose", "neck", "r_eye", "l_eye")], 2] == 1)
        assert np.all(kp[[KP[n] for n in ("r_hip", "l_hip", "r_knee", "l_ankle")], 2] == 0)
        assert np.abs(pixel(pair.src, kp[KP["nose"]]) - skin).max() <= 60, seed
        for eye in ("r_eye", "l_eye"):
            assert np.abs(pixel(pair.src, kp[KP[eye]]) - skin).max() > 40, (seed, eye)
        for shoulder in ("r_shoulder", "l_shoulder"):
            if kp[KP[shoulder], 2]:
                np.testing.assert_array_equal(pixel(pair.src, kp[KP[shoulder]]), identity.clothes_colour)
        # The bare face is centred on the head keypoints: in axes through the nose along the eye
        # line, the exact-skin pixels are centred across (symmetric face) and lie between the
        # hairline and the chin (about 1.5 eye distances tall).
        ys, xs = np.nonzero(np.all(pair.src == skin, axis=-1))
        across = kp[KP["l_eye"], :2] - kp[KP["r_eye"], :2]
        eye_distance = np.linalg.norm(across)
        across /= eye_distance
        down = np.array([-across[1], across[0]])
        offset = np.stack([xs + 0.5, ys + 0.5], axis=1) - kp[KP["nose"], :2]
        assert abs((offset @ across).mean()) < 0.15 * eye_distance, seed
        assert np.abs(offset @ across).max() < 1.5 * eye_distance, seed
        assert -1.3 * eye_distance < (offset @ down).min() and (offset @ down).max() < 1.3 * eye_distance, (
            seed
        )


def test_keypoints_scale_with_size_and_mark_outside_points_invisible():
    pose = Pose(0.5, 0.4, -10.0, 1.05)
    small, large = pose_keypoints(pose, 64), pose_keypoints(pose, 128)
    np.testing.assert_allclose(large[:, :2], 2 * small[:, :2], rtol=1e-5)
    off = pose_keypoints(Pose(0.02, 0.4, 0.0, 1.0), 64)
    assert off[KP["r_shoulder"], 0] < 0 and off[KP["r_shoulder"], 2] == 0 and off[KP["l_shoulder"], 2] == 1


def test_draw_pose_colours_and_pair_halves():
    kp = pose_keypoints(Pose(0.5, 0.42, 0.0, 1.0), 64)
    image = draw_pose(kp, 64, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.all(image[0, 0] == 0) and (image.sum(-1) == 0).mean() > 0.8
    assert tuple(pixel(image, kp[KP["nose"]])) == (255, 0, 0)  # joint 0 colour
    assert tuple(pixel(image, kp[KP["r_eye"]])) == (170, 0, 255)  # joint 14 colour
    middle = (kp[KP["neck"]] + kp[KP["r_shoulder"]]) / 2  # limb neck-r_shoulder: 0.6 x (255, 0, 0)
    assert tuple(pixel(image, middle)) == (153, 0, 0)
    hidden = kp.copy()
    hidden[KP["l_eye"], 2] = 0
    assert np.all(image == [255, 0, 255], axis=-1).any()  # joint 15 (l_eye) colour
    assert not np.all(draw_pose(hidden, 64, 64) == [255, 0, 255], axis=-1).any()
    pair = draw_pose_pair(kp, 64, 64)
    assert pair.shape == (64, 128, 3)
    np.testing.assert_array_equal(pair[:, :64], pair[:, 64:])
    np.testing.assert_array_equal(pair[:, :64], image)
    # Stick half-width: 4 px at 512 (as controlnet_aux), never under 1 px at small sizes.
    for size, rows in ((512, 8), (64, 2)):
        line = np.zeros((18, 3), np.float32)
        line[KP["neck"]] = (size * 0.2, size * 0.4, 1)
        line[KP["r_shoulder"]] = (size * 0.6, size * 0.4, 1)
        drawn = draw_pose(line, size, size)
        assert np.count_nonzero(drawn[:, int(size * 0.4), 0]) == rows, size
    with pytest.raises(ValueError, match="18, 3"):
        draw_pose(np.zeros((17, 3)), 64, 64)


# ---- prompts, arguments, jitter, faces ----------------------------------------------------------


def test_pair_prompts_follow_the_paper_templates():
    pair = make_pair(0, "santa")
    g = pair.gender
    assert pair.task == "costume" and g in ("man", "woman")
    assert pair.prompts == {
        "p": f"the same {g} on the left and right",
        "p_a": f"a {g}, normal costume",
        "p_b": f"a {g}, santa claus costume",
    }
    expr = make_pair(0, "shocked")
    assert expr.task == "expression"
    assert expr.prompts["p_a"] == f"a {g}, neutral expression" and expr.prompts["p_b"] == f"a {g}, shocked"


def test_argument_errors_say_what_is_allowed():
    with pytest.raises(ValueError, match="flower"):
        make_pair(0, "dance")
    for size in (60, 8, 63, 0):
        with pytest.raises(ValueError, match="multiple of 8"):
            make_pair(0, "sheep", size=size)
    with pytest.raises(ValueError, match="jitter"):
        make_pair(0, "sheep", jitter=-0.1)
    with pytest.raises(ValueError, match="seed"):
        make_pair(-1, "sheep")
    with pytest.raises(ValueError, match="direction"):
        render(identity_from_seed(0), Pose(0.5, 0.4, 0.0, 1.0), "hat")
    assert render(identity_from_seed(0), Pose(0.5, 0.4, 0.0, 1.0), size=24).shape == (24, 24, 3)


def test_jitter_changes_only_the_target():
    perfect = make_pair(5, "santa")
    np.testing.assert_array_equal(perfect.tgt, perfect.gt)
    for direction in ("santa", "crying"):
        clean, jittered = make_pair(5, direction), make_pair(5, direction, jitter=0.8)
        assert np.any(jittered.tgt != jittered.gt)
        for name in ("src", "gt", "edit_mask", "keypoints"):
            np.testing.assert_array_equal(getattr(jittered, name), getattr(clean, name), err_msg=name)
        assert jittered.direction == direction and jittered.meta["tgt_pose"] != jittered.meta["pose"]
    # Still a santa edit: about as much santa red in the jittered target as in the exact one.
    jittered = make_pair(5, "santa", jitter=0.8)
    red_gt, red_tgt = (count(x, (170, 0, 0), (235, 70, 80)) for x in (jittered.gt, jittered.tgt))
    assert abs(red_tgt - red_gt) < 0.25 * red_gt
    crying = make_pair(5, "crying", jitter=0.8)
    assert count(crying.tgt, (30, 120, 200), (110, 180, 255)) >= 4  # tears survive the jitter


def test_face_views_share_identity_and_vary_pose_and_expression():
    views = [make_face(7, v) for v in range(12)]
    assert len({v.image.tobytes() for v in views}) == 12
    assert {v.gender for v in views} == {identity_from_seed(7).gender}
    assert all(v.meta["identity"] == views[0].meta["identity"] and v.identity_seed == 7 for v in views)
    assert len({v.meta["expression"] for v in views}) >= 3
    assert all(v.meta["expression"] in FACE_EXPRESSIONS for v in views)
    assert len({json.dumps(v.meta["pose"]) for v in views}) == 12
    again = make_face(7, 3)
    np.testing.assert_array_equal(again.image, views[3].image)
    assert make_face(8, 3).meta["identity"] != views[3].meta["identity"]
    with pytest.raises(ValueError, match="view_seed"):
        make_face(7, -2)

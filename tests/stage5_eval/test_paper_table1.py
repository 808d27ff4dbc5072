"""evaluation/paper_table1.py: the paper's Table 1 orderings checked against a table, by hand-made cases."""

from portrait_edit.evaluation import paper_table1 as table1_report


def test_orderings_count_the_pairs_ordered_as_in_the_paper():
    paper = table1_report.PAPER["costume"]
    ours = {name: {"ssim": ssim, "fid_clip": fid} for name, (ssim, fid) in paper.items()}
    same = table1_report.orderings(ours, paper, "SSIM")
    assert same["rank"] == 1 and same["flip"] == [] and len(same["agree"]) == 28  # 8 rows: 28 pairs
    assert same["order"][:2] == ["Ours", "Ours w/o Mask"]
    # Swap the FIDs of Ours (52.56) and SDEdit 0.8 (93.17; only DiffEdit's 93.52 is worse). By hand:
    # Ours now beats only DiffEdit (5 pairs reverse), SDEdit 0.8 beats everyone (its 5 pairs with the
    # rows that beat it in the paper reverse) and the pair of the two reverses: 11 of 28.
    ours["Ours"]["fid_clip"], ours["SDEdit 0.8"]["fid_clip"] = paper["SDEdit 0.8"][1], paper["Ours"][1]
    swapped = table1_report.orderings(ours, paper, "FID")
    assert swapped["rank"] == 7 and swapped["order"][0] == "SDEdit 0.8" and swapped["order"][-1] == "DiffEdit"
    assert len(swapped["flip"]) == 11 and ("Ours", "SDEdit 0.8") in swapped["flip"]
    assert len(swapped["agree"]) == 17


def test_page_has_the_commands_every_table_and_the_orderings():
    rows = [{"method": n, "ssim": s, "fid_clip": f} for n, (s, f) in table1_report.PAPER["costume"].items()]
    table = {
        "title": "T", "items": 8, "rows": rows, "unavailable": {"lpips": "no weights"},
        "by_task": {"costume": {"directions": ["santa"], "rows": rows}},
    }  # fmt: skip
    text = table1_report.page(table, ["make it"], None, "abc123")
    assert "make it" in text and "## costume (santa)" in text and "LPIPS: unavailable: no weights" in text
    assert "**costume, SSIM** (ssim): Ours > Ours w/o Mask" in text and "28 of 28 pairs" in text

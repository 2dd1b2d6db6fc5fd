"""The loss-curve PNG (distill_jax/plots.py): which curves it draws and that it writes a PNG."""

from distill_jax.plots import curve_names, plot_loss_curves


def test_a_term_that_is_the_whole_objective_is_not_drawn_on_top_of_the_total(tmp_path):
    single = [{"step": s, "loss": 1.0 / s, "loss/minilmv2": 1.0 / s, "loss/minilmv2/qq": 0.3 / s}
              for s in (1, 2, 3)]
    assert curve_names(single) == [("loss", "loss (= loss/minilmv2)"),
                                   ("loss/minilmv2/qq", "loss/minilmv2/qq")]
    two = [{"step": s, "loss": 3.0 / s, "loss/hs": 1.0 / s, "loss/od": 2.0 / s} for s in (1, 2)]
    assert curve_names(two) == [("loss", "loss"), ("loss/hs", "loss/hs"), ("loss/od", "loss/od")]
    path = plot_loss_curves(single, str(tmp_path / "curves.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

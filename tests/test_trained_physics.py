"""A model trained the demo's way reproduces its reference's equation of state (slow: about 5 minutes).

EAM copper frames from the demo's sampled states (volumes -6% to +6%, sheared boxes, stresses), 3 minutes of
training with the demo's config, export to .pt2, then lattice constant and bulk modulus in LAMMPS against
EAM's (vivace.properties). The demo after 4 minutes on 2 threads gives -0.06% and -0.9%; the bounds here
leave room for the shorter budget and for a busy machine."""

import os

import pytest

pytestmark = pytest.mark.slow


def test_trained_model_equation_of_state(tmp_path):
    from vivace import demo
    from vivace.export import export
    from vivace.training import train

    out = str(tmp_path)
    demo.make_data(out)
    run = train(demo.write_config(out, minutes=3.0))
    artifact = export(os.path.join(run, "best.ckpt"), os.path.join(out, "model.pt2"))
    eos = demo.equation_of_state(out, artifact)
    (a_ref, b_ref), (a_model, b_model) = eos["EAM"], eos["model"]
    assert abs(a_model - a_ref) / a_ref < 0.003, (a_model, a_ref)
    assert abs(b_model - b_ref) / b_ref < 0.10, (b_model, b_ref)

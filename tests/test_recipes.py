"""host.recipes: the named, frozen, printable recipes and their validation."""

import dataclasses

import pytest

from host.recipes import RECIPES, Recipe, get_recipe, recipe_names

EXPECTED = ["fp32", "int8", "shiftquant4", "luq4", "luq4-smp2", "luq4-fnt", "psq4", "bhq5", "lbt4", "lbt5",
            "naive-log4", "naive4"]


def test_every_seed_method_has_a_recipe():
    assert recipe_names() == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_recipes_are_frozen_and_printable(name):
    r = get_recipe(name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.grad_bits = 3
    text = r.describe()
    assert text.startswith(f"recipe {name}:")
    for f in dataclasses.fields(Recipe):
        if f.name not in ("name", "description", "source", "notes"):
            assert f"  {f.name} = " in text
    assert r.as_dict()["name"] == name


def test_recipe_contents_follow_the_spec():
    sq = get_recipe("shiftquant4")
    assert sq.bifurcate and sq.norm == "l1" and (sq.weight_quant, sq.act_quant) == ("int_sym", "int_unsigned")
    luq = get_recipe("luq4")
    assert (luq.weight_quant, luq.grad_quant, luq.luq_max_exp, luq.bifurcate) == ("sawb", "luq", 6, False)
    assert get_recipe("luq4-smp2").smp_samples == 2 and get_recipe("luq4-fnt").fnt_epochs == 1
    psq = get_recipe("psq4")
    assert (psq.grad_quant, psq.grad_bits, psq.u_quant, psq.u_bits, psq.bifurcate) == ("psq", 4, "psq", 8, True)
    assert get_recipe("bhq5").grad_bits == 5 and get_recipe("bhq5").u_quant == "psq"
    assert get_recipe("lbt4").lbt_adaptive and get_recipe("lbt5").grad_bits == get_recipe("lbt5").fwd_bits == 5
    assert not get_recipe("fp32").quantized and get_recipe("naive4").grad_quant == "int_rdn"
    nl = get_recipe("naive-log4")
    assert (nl.weight_quant, nl.act_quant, nl.grad_quant, nl.luq_rounding, nl.luq_underflow, nl.smp_samples) == \
        ("sawb", "sawb", "luq", "rdn", "flush", 1)
    assert (get_recipe("luq4").luq_rounding, get_recipe("luq4").luq_underflow) == ("sr", "stochastic")
    assert get_recipe("naive-log4", luq_underflow="nearest").luq_underflow == "nearest"
    with pytest.raises(ValueError, match="luq_rounding must be one of"):
        get_recipe("luq4", luq_rounding="nearest")
    with pytest.raises(ValueError, match=r"luq_underflow must be one of \['stochastic'\]"):
        get_recipe("luq4", luq_underflow="flush")
    with pytest.raises(ValueError, match="smp_samples > 1 needs luq_rounding='sr'"):
        get_recipe("naive-log4", smp_samples=2)


def test_overrides_make_new_recipes():
    r = get_recipe("lbt4", grad_bits=5, fwd_bits=5)
    assert (r.grad_bits, r.fwd_bits) == (5, 5) and RECIPES["lbt4"].grad_bits == 4
    assert get_recipe(r) is r


def test_edge_and_fnt_views():
    r = get_recipe("luq4-fnt")
    assert r.edge_recipe().name == "int8" and get_recipe("psq4").edge_recipe().name == "psq4"
    f = r.fnt_recipe()
    assert (f.weight_quant, f.act_quant, f.grad_quant) == ("sawb", "none", "none")


def test_errors_list_valid_names():
    with pytest.raises(ValueError, match=r"valid names: \['fp32', 'int8'"):
        get_recipe("luq3")
    with pytest.raises(ValueError, match="unknown recipe field"):
        get_recipe("luq4", gradbits=3)
    with pytest.raises(ValueError, match="grad_quant must be one of"):
        get_recipe("luq4", grad_quant="fp4")
    with pytest.raises(ValueError, match="grad_bits must be an int in 2..16"):
        get_recipe("luq4", grad_bits=1)
    with pytest.raises(ValueError, match="smp_samples > 1 needs"):
        get_recipe("psq4", smp_samples=2)
    with pytest.raises(ValueError, match="BHQ is a B-path quantizer"):
        get_recipe("bhq5", grad_quant_u=None)

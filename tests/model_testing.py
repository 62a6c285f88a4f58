"""Shared by the model tests: abstract initialisation (shapes only), compilation without XLA's
backend optimisation (fast on CPU; the tests check values, not speed), parameter names."""

import flax
import jax
import jax.numpy as jnp


def shapes_of_init(module, input_shape, **kwargs):
    """Variables of `module` as ShapeDtypeStructs (nothing is allocated or compiled)."""
    inputs = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **kwargs), inputs)


def compile_for(fn, *args):
    """`fn` jit-compiled for arguments shaped like `args`, without XLA's backend optimisation
    (about 4x faster to compile on CPU; these tests check values, not speed)."""
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(fn).lower(*args).compile(compiler_options=options)


def run_compiled(fn, *args):
    return compile_for(fn, *args)(*args)


def flat_names(tree) -> set:
    return {"/".join(path) for path in flax.traverse_util.flatten_dict(tree)}

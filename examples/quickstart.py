# The Quick Start of the README that first described Titanax, verbatim: it must keep running.
import jax
import jax.numpy as jnp
import titanax as tx

# Simple model and data
def model_apply(params, x):
    return x @ params["w"] + params["b"]

params = {"w": jax.random.normal(jax.random.PRNGKey(42), (2, 1)) * 0.1, "b": jnp.zeros((1,))}
batch = {"x": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "y": jnp.array([[1.5], [3.5]])}

# Set up Titanax engine  
mesh = tx.MeshSpec(devices=[jax.devices("cpu")[0]], axes=("data",))
plan = tx.Plan(data_parallel=tx.DP(axis="data"))
engine = tx.Engine(mesh=mesh, plan=plan, optimizer=tx.optim.sgd(0.01), loggers=[tx.loggers.Basic()])

# Train with explicit step function
@tx.step_fn
def train_step(state, batch):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((model_apply(p, batch["x"]) - batch["y"]) ** 2))(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}

# Train for 3 steps
state = engine.create_state(params)
for step in range(3):
    state, metrics = train_step(state, batch)
    print(f"Step {step + 1}: loss={metrics['loss']:.6f}")

//! Reverse-mode autograd: ops on tensors that require gradients record a [`Node`] (their
//! inputs and a backward closure); [`Tensor::backward`] walks the nodes in reverse topological
//! order. Every backward is GPU ops recorded on the same batch: no host round trip.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::tensor::{Tensor, fresh_id};

/// Maps the gradient of an op's output to the gradients of its inputs (`None`: no gradient).
pub(crate) type BackwardFn = Box<dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// A backward that also takes the gradient already accumulated for one of its inputs (removed
/// from the pending sum, `None` when nothing reached it yet) and returns that input's gradient
/// with it included: a fused kernel adds it instead of a separate accumulation dispatch.
pub(crate) type AbsorbingBackwardFn =
    Box<dyn Fn(&Tensor, Option<&Tensor>) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// How a node maps its output gradient back.
pub(crate) enum Backward {
    Plain(BackwardFn),
    /// The input at this index has its pending gradient handed to the closure.
    Absorbing(usize, AbsorbingBackwardFn),
}

/// One recorded op.
pub(crate) struct Node {
    pub op: &'static str,
    pub inputs: Vec<Tensor>,
    pub backward: Backward,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record for autograd.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Turns recording off on this thread until dropped (inference mode): no graph is kept, so
/// intermediates are freed as soon as the last handle drops.
pub struct NoGradGuard {
    prev: bool,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Enter inference mode on this thread until the guard drops.
pub fn no_grad() -> NoGradGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(false));
    NoGradGuard { prev }
}

/// Run `f` in inference mode.
pub fn inference<R>(f: impl FnOnce() -> R) -> R {
    let _g = no_grad();
    f()
}

/// Gradients from [`Tensor::backward`], keyed by the parameter tensors (leaves) they belong to.
#[derive(Default, Debug)]
pub struct Gradients {
    map: HashMap<u64, Tensor>,
}

impl Gradients {
    /// The gradient of `param`, if it took part in the loss.
    pub fn get(&self, param: &Tensor) -> Option<&Tensor> {
        self.map.get(&param.id)
    }
    /// Take the gradient of `param` out of the set.
    pub fn remove(&mut self, param: &Tensor) -> Option<Tensor> {
        self.map.remove(&param.id)
    }
    /// Number of parameters with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// True when no parameter got a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub(crate) fn insert(&mut self, param: &Tensor, g: Tensor) {
        self.map.insert(param.id, g);
    }
}

impl Tensor {
    /// Whether gradients flow to or through this tensor.
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }

    /// This tensor as a parameter (a leaf that collects a gradient). Shares the buffer.
    pub fn with_grad(&self) -> Tensor {
        Tensor {
            requires_grad: true,
            node: None,
            id: fresh_id(),
            ..self.clone()
        }
    }

    /// The same data, cut off from the graph.
    pub fn detach(&self) -> Tensor {
        Tensor {
            requires_grad: false,
            node: None,
            ..self.clone()
        }
    }

    /// Whether an op on `inputs` should be recorded.
    pub(crate) fn should_record(inputs: &[&Tensor]) -> bool {
        inputs.iter().any(|t| t.requires_grad) && is_grad_enabled()
    }

    /// Attach a node to a freshly computed `out` when any input requires a gradient.
    pub(crate) fn record(
        self,
        op: &'static str,
        inputs: &[&Tensor],
        backward: BackwardFn,
    ) -> Tensor {
        self.record_node(op, inputs, Backward::Plain(backward))
    }

    /// [`record`](Self::record) with a backward that absorbs the gradient already pending for
    /// `inputs[absorb]` (any gradient reaching it later is added as usual, so the sum is the
    /// same whatever the order).
    pub(crate) fn record_absorbing(
        self,
        op: &'static str,
        inputs: &[&Tensor],
        absorb: usize,
        backward: AbsorbingBackwardFn,
    ) -> Tensor {
        self.record_node(op, inputs, Backward::Absorbing(absorb, backward))
    }

    fn record_node(mut self, op: &'static str, inputs: &[&Tensor], backward: Backward) -> Tensor {
        if Self::should_record(inputs) {
            self.requires_grad = true;
            self.node = Some(Arc::new(Node {
                op,
                inputs: inputs.iter().map(|t| (*t).clone()).collect(),
                backward,
            }));
        }
        self
    }

    /// Gradients of this one-element tensor (the loss) with respect to every parameter it
    /// depends on. The backward pass is recorded on the GPU batch like any op.
    pub fn backward(&self) -> Result<Gradients> {
        if self.numel() != 1 {
            return Err(Error::Shape {
                op: "backward",
                message: format!(
                    "needs a one-element loss, got shape {:?}; use backward_with",
                    self.shape
                ),
            });
        }
        let seed = Tensor::ones(&self.dev, &self.shape)?;
        self.backward_with(&seed)
    }

    /// Backward pass seeded with `grad` (same shape as `self`).
    pub fn backward_with(&self, grad: &Tensor) -> Result<Gradients> {
        grad.expect_shape("backward", &self.shape)?;
        if !self.requires_grad {
            return Err(Error::InvalidArgument {
                op: "backward",
                message:
                    "the tensor does not depend on any parameter (no tensor with_grad() reached it)"
                        .into(),
            });
        }
        let _g = no_grad();
        let order = topo_order(self);
        let mut pending: HashMap<u64, Tensor> = HashMap::new();
        pending.insert(self.id, grad.detach());
        let mut out = Gradients::default();
        for t in order.iter().rev() {
            let Some(g) = pending.remove(&t.id) else {
                continue;
            };
            let Some(node) = &t.node else {
                out.insert(t, g);
                continue;
            };
            let grads = match &node.backward {
                Backward::Plain(f) => f(&g)?,
                Backward::Absorbing(i, f) => {
                    let prev = node.inputs.get(*i).and_then(|t| pending.remove(&t.id));
                    let mut grads = f(&g, prev.as_ref())?;
                    // A closure that gives the input no gradient must not drop what it took.
                    if let Some(slot) = grads.get_mut(*i)
                        && slot.is_none()
                    {
                        *slot = prev;
                    }
                    grads
                }
            };
            for (inp, gi) in node.inputs.iter().zip(grads) {
                let Some(gi) = gi else { continue };
                if !inp.requires_grad {
                    continue;
                }
                if gi.shape != inp.shape {
                    // A backward's bug (a custom op's closure, say), not the device's.
                    return Err(Error::Shape {
                        op: node.op,
                        message: format!(
                            "backward produced a gradient of shape {:?} for an input of shape {:?}",
                            gi.shape, inp.shape
                        ),
                    });
                }
                if gi.dtype != inp.dtype {
                    return Err(Error::DType {
                        op: node.op,
                        expected: inp.dtype.name(),
                        got: gi.dtype.name(),
                    });
                }
                let acc = match pending.remove(&inp.id) {
                    Some(prev) => prev.add(&gi)?,
                    None => gi,
                };
                pending.insert(inp.id, acc);
            }
        }
        Ok(out)
    }
}

/// Tensors reachable from `root` through recorded nodes, each after all its inputs.
fn topo_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative DFS: (tensor, inputs already pushed).
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id) {
            continue;
        }
        let node = t.node.clone();
        stack.push((t, true));
        if let Some(node) = node {
            for inp in &node.inputs {
                if inp.requires_grad && !seen.contains(&inp.id) {
                    stack.push((inp.clone(), false));
                }
            }
        }
    }
    order
}

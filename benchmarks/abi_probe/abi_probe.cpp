// A probe, not part of the library: operators with the list arguments of SGDF's fused kernel call (five lists of
// tensors) that do nothing (noop5), or only read every tensor's metadata as the kernel's checks do (metas5), and one
// with only the params' and grads' lists beside three single tensors (noop2: state in flat buffers), built
// on the LibTorch stable ABI as the library is. benchmarks/bench_host_cost.py --abi-probe compiles it and times
// them, to tell the entry cost of such an operator from the kernel's own work.
#include <Python.h>

#include "common/boxing.h"
#include "common/tensor_lists.h"

namespace {

using sgdf_erd::TensorHandles;

void noop5(const TensorHandles&, const TensorHandles&, const TensorHandles&, const TensorHandles&,
           const TensorHandles&) {}

void metas5(const TensorHandles& a, const TensorHandles& b, const TensorHandles& c, const TensorHandles& d,
            const TensorHandles& e) {
  for (const TensorHandles* list : {&a, &b, &c, &d, &e}) sgdf_erd::read_metas(*list);
}

// The lists a call would take with each param group's state in flat buffers (one tensor per moment and one of step
// counts for the group): params and grads only.
void noop2(const TensorHandles&, const TensorHandles&, const sgdf_erd::Tensor&, const sgdf_erd::Tensor&,
           const sgdf_erd::Tensor&) {}

}  // namespace

STABLE_TORCH_LIBRARY(sgdf_erd_abi_probe, m) {
  m.def("noop5(Tensor(a!)[] a, Tensor(b!)[] b, Tensor(c!)[] c, Tensor(d!)[] d, Tensor(e!)[] e) -> ()");
  m.def("noop2(Tensor(a!)[] a, Tensor(b!)[] b, Tensor(c!) c, Tensor(d!) d, Tensor(e!) e) -> ()");
  m.def("metas5(Tensor(a!)[] a, Tensor(b!)[] b, Tensor(c!)[] c, Tensor(d!)[] d, Tensor(e!)[] e) -> ()");
}

STABLE_TORCH_LIBRARY_IMPL(sgdf_erd_abi_probe, CPU, m) {
  m.impl("noop5", SGDF_ERD_BOX(&noop5));
  m.impl("noop2", SGDF_ERD_BOX(&noop2));
  m.impl("metas5", SGDF_ERD_BOX(&metas5));
}

PyMODINIT_FUNC PyInit_abi_probe(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "abi_probe", "", -1, nullptr};
  return PyModule_Create(&module);
}

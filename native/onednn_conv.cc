// oneDNN's convolution kernels (forward, backward data, backward weights) as
// one typed XLA FFI handler for the cpu platform: jaxconv's native CPU back
// end (lowering/cpu/onednn.py binds it).
//
// Operands arrive in TF's layouts: activations [N, *spatial, C] or
// [N, C, *spatial], filters [*K, C_in / groups, C_out].  They are described
// to oneDNN by strides (no copy); the primitive itself is created with
// `format_tag::any`, so oneDNN picks its blocked layouts, and the operands
// are reordered into them where they differ (measured to pay:
// benchmarks/README.md, "oneDNN").  Every primitive descriptor, primitive
// and reorder is built once per configuration and cached.
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "nanobind/nanobind.h"
#include "nanobind/stl/string.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
namespace nb = nanobind;
using dnnl::memory;

namespace {

enum Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::optional<memory::data_type> DataType(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::F32: return memory::data_type::f32;
    case ffi::DataType::BF16: return memory::data_type::bf16;
    case ffi::DataType::F16: return memory::data_type::f16;
    default: return std::nullopt;
  }
}

// The geometry of one call, in oneDNN's terms (dims N, C, *spatial).
struct Geometry {
  int64_t kind, groups, channels_last;
  memory::data_type type;
  memory::dims src, weights, dst, strides, dilations, pad_l, pad_r;

  std::string Key() const {
    std::ostringstream key;
    key << kind << ':' << groups << ':' << channels_last << ':'
        << static_cast<int>(type);
    for (const memory::dims* dims :
         {&src, &weights, &dst, &strides, &dilations, &pad_l, &pad_r}) {
      key << '|';
      for (auto d : *dims) key << d << ',';
    }
    return key.str();
  }
};

// An activation [N, C, *S] with TF's channels-last or channels-first strides.
memory::desc ActivationDesc(const memory::dims& dims, memory::data_type type,
                            bool channels_last) {
  const size_t n = dims.size() - 2;
  memory::dims strides(dims.size());
  if (channels_last) {  // [N, *S, C]
    strides[1] = 1;
    int64_t step = dims[1];
    for (size_t i = n; i-- > 0;) {
      strides[2 + i] = step;
      step *= dims[2 + i];
    }
    strides[0] = step;
  } else {  // [N, C, *S]
    int64_t step = 1;
    for (size_t i = dims.size(); i-- > 0;) {
      strides[i] = step;
      step *= dims[i];
    }
  }
  return memory::desc(dims, type, strides);
}

// TF's filter [*K, I, G * O] as oneDNN's weights [G, O, I, *K] (or [O, I, *K]
// for one group).
memory::desc WeightsDesc(const memory::dims& dims, memory::data_type type,
                         int64_t groups) {
  const bool grouped = groups > 1;
  const size_t lead = grouped ? 3 : 2, n = dims.size() - lead;
  const int64_t o = dims[lead - 2], i = dims[lead - 1], out = groups * o;
  memory::dims strides(dims.size());
  int64_t step = i * out;
  for (size_t k = n; k-- > 0;) {
    strides[lead + k] = step;
    step *= dims[lead + k];
  }
  strides[lead - 1] = out;  // I
  strides[lead - 2] = 1;    // O
  if (grouped) strides[0] = o;
  return memory::desc(dims, type, strides);
}

// One configuration's primitive and the reorders between TF's layouts and
// the primitive's.
struct Entry {
  dnnl::primitive primitive;
  // Per role (src, weights, dst): TF's layout, the primitive's, and a
  // reorder where they differ.
  memory::desc user[3], inner[3];
  std::optional<dnnl::reorder> reorder[3];
  size_t scratchpad_bytes = 0;  // the largest of the primitive's and reorders'
  int output_role = 0;  // which role the call writes
  std::string impl;
};

constexpr int kSrc = 0, kWeights = 1, kDst = 2;

std::mutex cache_mutex;
std::unordered_map<std::string, std::shared_ptr<Entry>> cache;
std::atomic<int64_t> primitives_created{0};

memory::desc Any(const memory::desc& d) {
  return memory::desc(d.get_dims(), d.get_data_type(), memory::format_tag::any);
}

// Which layouts a primitive is asked for: oneDNN's choice for every operand
// (often blocked, with reorders from and to TF's), or TF's own for the
// activations (no activation reorders; oneDNN still picks the weights').
enum Layouts { kOnednnLayouts = 0, kTfActivations = 1 };

std::shared_ptr<Entry> Build(const Geometry& g, Layouts layouts) {
  auto entry = std::make_shared<Entry>();
  Entry& e = *entry;
  e.user[kSrc] = ActivationDesc(g.src, g.type, g.channels_last);
  e.user[kWeights] = WeightsDesc(g.weights, g.type, g.groups);
  e.user[kDst] = ActivationDesc(g.dst, g.type, g.channels_last);
  memory::desc want[3];
  for (int r = 0; r < 3; ++r) {
    want[r] = layouts == kTfActivations && r != kWeights ? e.user[r]
                                                         : Any(e.user[r]);
  }
  memory::dims dilations(g.dilations);
  for (auto& d : dilations) d -= 1;  // oneDNN counts the gaps
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto& engine = Engine();
  const auto algo = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc fwd(
      engine, dnnl::prop_kind::forward_training, algo, want[kSrc],
      want[kWeights], want[kDst], g.strides, dilations, g.pad_l, g.pad_r,
      g.kind == kForward ? attr : dnnl::primitive_attr());
  if (g.kind == kForward) {
    e.inner[kSrc] = fwd.src_desc();
    e.inner[kWeights] = fwd.weights_desc();
    e.inner[kDst] = fwd.dst_desc();
    e.scratchpad_bytes = fwd.scratchpad_desc().get_size();
    e.impl = fwd.impl_info_str();
    e.primitive = dnnl::convolution_forward(fwd);
    e.output_role = kDst;
  } else if (g.kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc bwd(
        engine, algo, want[kSrc], want[kWeights], want[kDst], g.strides,
        dilations, g.pad_l, g.pad_r, fwd, attr);
    e.inner[kSrc] = bwd.diff_src_desc();
    e.inner[kWeights] = bwd.weights_desc();
    e.inner[kDst] = bwd.diff_dst_desc();
    e.scratchpad_bytes = bwd.scratchpad_desc().get_size();
    e.impl = bwd.impl_info_str();
    e.primitive = dnnl::convolution_backward_data(bwd);
    e.output_role = kSrc;
  } else {
    dnnl::convolution_backward_weights::primitive_desc bwd(
        engine, algo, want[kSrc], want[kWeights], want[kDst], g.strides,
        dilations, g.pad_l, g.pad_r, fwd, attr);
    e.inner[kSrc] = bwd.src_desc();
    e.inner[kWeights] = bwd.diff_weights_desc();
    e.inner[kDst] = bwd.diff_dst_desc();
    e.scratchpad_bytes = bwd.scratchpad_desc().get_size();
    e.impl = bwd.impl_info_str();
    e.primitive = dnnl::convolution_backward_weights(bwd);
    e.output_role = kWeights;
  }
  // Reorders too take the caller's scratchpad: in oneDNN's default
  // (library) mode one scratchpad is shared by all primitives and a
  // primitive must run in the thread that created it, which XLA's threads
  // do not guarantee.  They run one after another, so one region serves.
  for (int r = 0; r < 3; ++r) {
    if (e.inner[r] == e.user[r]) continue;
    const bool out = r == e.output_role;
    dnnl::reorder::primitive_desc pd(engine, out ? e.inner[r] : e.user[r],
                                     engine, out ? e.user[r] : e.inner[r],
                                     attr);
    e.scratchpad_bytes = std::max(e.scratchpad_bytes,
                                  pd.scratchpad_desc().get_size());
    e.reorder[r] = dnnl::reorder(pd);
  }
  return entry;
}

// Per-thread working memory: the reordered operands and the scratchpad.
struct Workspace {
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> data;
  size_t size = 0;

  char* Get(size_t bytes) {
    if (bytes > size) {
      size = std::max(bytes, size + size / 2);
      data.reset(static_cast<char*>(std::aligned_alloc(64, (size + 63) & ~size_t{63})));
      if (!data) size = 0;
    }
    return data.get();
  }
};

size_t Align(size_t bytes) { return (bytes + 63) & ~size_t{63}; }

// Runs an entry on buffers in TF's layouts (data[role]), reordering to and
// from the primitive's layouts in this thread's workspace.
void Execute(const Entry& e, void* const data[3]) {
  size_t offsets[4], total = 0;
  for (int r = 0; r < 3; ++r) {
    offsets[r] = total;
    if (e.reorder[r]) total += Align(e.inner[r].get_size());
  }
  offsets[3] = total;
  total += Align(e.scratchpad_bytes);
  thread_local Workspace workspace;
  char* work = workspace.Get(total);
  if (total && !work) throw std::bad_alloc();
  auto& engine = Engine();
  thread_local dnnl::stream stream(engine);
  memory scratchpad(memory::desc({static_cast<int64_t>(e.scratchpad_bytes)},
                                 memory::data_type::u8, memory::format_tag::x),
                    engine, work + offsets[3]);
  auto reorder = [&](int r, const memory& from, const memory& to) {
    e.reorder[r]->execute(stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                   {DNNL_ARG_SCRATCHPAD, scratchpad}});
  };
  memory user[3], inner[3];
  for (int r = 0; r < 3; ++r) {
    user[r] = memory(e.user[r], engine, data[r]);
    inner[r] = e.reorder[r] ? memory(e.inner[r], engine, work + offsets[r]) : user[r];
    if (e.reorder[r] && r != e.output_role) reorder(r, user[r], inner[r]);
  }
  std::unordered_map<int, memory> args;
  args[DNNL_ARG_SCRATCHPAD] = scratchpad;
  if (e.output_role == kDst) {
    args[DNNL_ARG_SRC] = inner[kSrc];
    args[DNNL_ARG_WEIGHTS] = inner[kWeights];
    args[DNNL_ARG_DST] = inner[kDst];
  } else if (e.output_role == kSrc) {
    args[DNNL_ARG_DIFF_SRC] = inner[kSrc];
    args[DNNL_ARG_WEIGHTS] = inner[kWeights];
    args[DNNL_ARG_DIFF_DST] = inner[kDst];
  } else {
    args[DNNL_ARG_SRC] = inner[kSrc];
    args[DNNL_ARG_DIFF_WEIGHTS] = inner[kWeights];
    args[DNNL_ARG_DIFF_DST] = inner[kDst];
  }
  e.primitive.execute(stream, args);
  const int o = e.output_role;
  if (e.reorder[o]) reorder(o, inner[o], user[o]);
  stream.wait();
}

// How float32 layouts are chosen: set at load from JAXCONV_ONEDNN_LAYOUTS
// (lowering/cpu/onednn.py parses it) or by set_layouts: one policy pinned for
// every primitive, or (-1) each configuration timed once, both ways, on
// zeroed operands (the choice is a property of the layer: blocked layouts
// win where their kernel pays for the reorders).  Primitives are cached per
// policy, so a change applies to configurations already run.
std::atomic<int> layout_policy{-1};

std::atomic<int64_t> layouts_tuned{0}, tuning_ns{0};

// The policy that applies to g: half precision keeps oneDNN's layouts (on
// TF's, oneDNN 3.2 gave wrong bfloat16 filter gradients; tests/test_onednn.py
// pins this).
int PolicyFor(const Geometry& g) {
  return g.type == memory::data_type::f32 ? layout_policy.load()
                                           : kOnednnLayouts;
}

std::shared_ptr<Entry> Tuned(const Geometry& g, int policy) {
  if (policy >= 0) return Build(g, static_cast<Layouts>(policy));
  std::shared_ptr<Entry> candidates[2] = {Build(g, kOnednnLayouts),
                                          Build(g, kTfActivations)};
  bool same = true;
  for (int r = 0; r < 3; ++r) {
    same = same && candidates[0]->inner[r] == candidates[1]->inner[r];
  }
  if (same) return candidates[0];
  Workspace operands[3];
  void* data[3];
  for (int r = 0; r < 3; ++r) {
    const size_t bytes = candidates[0]->user[r].get_size();
    data[r] = operands[r].Get(bytes);
    if (bytes && !data[r]) throw std::bad_alloc();
    if (bytes) std::memset(data[r], 0, bytes);
  }
  // One warm-up each, then alternating rounds (at least 3, at most 20, while
  // under 10 ms): the faster minimum wins.
  const auto start = std::chrono::steady_clock::now();
  double best[2] = {1e30, 1e30};
  for (auto& c : candidates) Execute(*c, data);
  for (int round = 0; round < 20; ++round) {
    for (int c = 0; c < 2; ++c) {
      const auto t = std::chrono::steady_clock::now();
      Execute(*candidates[c], data);
      best[c] = std::min(best[c], std::chrono::duration<double>(
                                      std::chrono::steady_clock::now() - t).count());
    }
    if (round >= 2 && std::chrono::steady_clock::now() - start >
                          std::chrono::milliseconds(10)) break;
  }
  layouts_tuned.fetch_add(1);
  tuning_ns.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::steady_clock::now() - start).count());
  return candidates[best[1] < best[0] ? 1 : 0];
}

std::shared_ptr<Entry> Lookup(const Geometry& g) {
  const int policy = PolicyFor(g);
  const std::string key = g.Key() + '#' + std::to_string(policy);
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto entry = Tuned(g, policy);  // outside the lock: creation takes ms
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto [it, inserted] = cache.emplace(key, std::move(entry));
  if (inserted) primitives_created.fetch_add(1);
  return it->second;
}

// The TF-layout dims of a buffer in oneDNN's order.
memory::dims ActivationDims(ffi::AnyBuffer::Dimensions d, bool channels_last) {
  memory::dims dims(d.begin(), d.end());
  if (channels_last) {
    std::rotate(dims.begin() + 1, dims.end() - 1, dims.end());  // C forward
  }
  return dims;
}

memory::dims FilterDims(ffi::AnyBuffer::Dimensions d, int64_t groups) {
  const size_t n = d.size() - 2;
  const int64_t i = d[n], out = d[n + 1];
  memory::dims dims;
  if (groups > 1) dims.push_back(groups);
  dims.push_back(out / groups);
  dims.push_back(i);
  for (size_t k = 0; k < n; ++k) dims.push_back(d[k]);
  return dims;
}

ffi::Error Conv(ffi::AnyBuffer a, ffi::AnyBuffer b,
                ffi::Result<ffi::AnyBuffer> out, int64_t kind,
                ffi::Span<const int64_t> strides,
                ffi::Span<const int64_t> dilations,
                ffi::Span<const int64_t> pad_l,
                ffi::Span<const int64_t> pad_r, int64_t groups,
                int64_t channels_last) {
  auto type = DataType(a.element_type());
  if (!type || b.element_type() != a.element_type() ||
      out->element_type() != a.element_type()) {
    return ffi::Error::InvalidArgument(
        "jaxconv oneDNN convolution: operands must share one of float32, "
        "bfloat16, float16");
  }
  if (kind < kForward || kind > kBackwardWeights || groups < 1) {
    return ffi::Error::InvalidArgument("jaxconv oneDNN convolution: bad kind/groups");
  }
  // Roles: forward (x, w) -> y; backward data (w, dy) -> dx;
  // backward weights (x, dy) -> dw.
  const ffi::AnyBuffer* role[3];
  void* data[3];
  if (kind == kForward) {
    role[kSrc] = &a; role[kWeights] = &b; role[kDst] = nullptr;
  } else if (kind == kBackwardData) {
    role[kSrc] = nullptr; role[kWeights] = &a; role[kDst] = &b;
  } else {
    role[kSrc] = &a; role[kWeights] = nullptr; role[kDst] = &b;
  }
  Geometry g{kind, groups, channels_last, *type};
  for (int r = 0; r < 3; ++r) {
    const ffi::AnyBuffer& buf = role[r] ? *role[r] : *out;
    data[r] = buf.untyped_data();
    memory::dims dims = r == kWeights ? FilterDims(buf.dimensions(), groups)
                                      : ActivationDims(buf.dimensions(), channels_last);
    (r == kSrc ? g.src : r == kWeights ? g.weights : g.dst) = dims;
  }
  g.strides.assign(strides.begin(), strides.end());
  g.dilations.assign(dilations.begin(), dilations.end());
  g.pad_l.assign(pad_l.begin(), pad_l.end());
  g.pad_r.assign(pad_r.begin(), pad_r.end());
  try {
    Execute(*Lookup(g), data);
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("jaxconv oneDNN convolution: ") + err.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("jaxconv oneDNN convolution: out of memory");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JaxconvOnednnConv, Conv,
    ffi::Ffi::Bind()
        .Arg<ffi::AnyBuffer>()
        .Arg<ffi::AnyBuffer>()
        .Ret<ffi::AnyBuffer>()
        .Attr<int64_t>("kind")
        .Attr<ffi::Span<const int64_t>>("strides")
        .Attr<ffi::Span<const int64_t>>("dilations")
        .Attr<ffi::Span<const int64_t>>("pad_l")
        .Attr<ffi::Span<const int64_t>>("pad_r")
        .Attr<int64_t>("groups")
        .Attr<int64_t>("channels_last"));

namespace {

// The implementation oneDNN picks for a representative layer of this dtype
// (8x8x16 -> 16 channels, k3 s1): "ref" means no optimised kernel here.
std::string Implementation(const std::string& dtype, int64_t kind) {
  memory::data_type type = dtype == "float32"    ? memory::data_type::f32
                           : dtype == "bfloat16" ? memory::data_type::bf16
                           : dtype == "float16"  ? memory::data_type::f16
                                                 : memory::data_type::undef;
  if (type == memory::data_type::undef) return "unsupported";
  Geometry g{kind, 1, 1, type, {2, 16, 8, 8}, {16, 16, 3, 3}, {2, 16, 8, 8},
             {1, 1}, {1, 1}, {1, 1}, {1, 1}};
  try {
    return Build(g, kOnednnLayouts)->impl;
  } catch (const dnnl::error& err) {
    return std::string("unsupported: ") + err.what();
  }
}

}  // namespace

NB_MODULE(_onednn, m) {
  m.doc() = "oneDNN convolutions as an XLA FFI handler (jaxconv)";
  m.def("handler", []() {
    return nb::capsule(reinterpret_cast<void*>(JaxconvOnednnConv));
  }, "The FFI handler: register it for the cpu platform.");
  m.def("implementation", &Implementation, nb::arg("dtype"), nb::arg("kind"),
        "oneDNN's implementation for a representative layer of this dtype.");
  m.def("set_layouts", [](const std::string& policy) {
    layout_policy = policy == "onednn" ? kOnednnLayouts
                    : policy == "tf"   ? kTfActivations : -1;
  }, nb::arg("policy"), "'onednn', 'tf' (pinned) or '' (timed per configuration).");
  m.def("layout_policy", []() {
    const int policy = layout_policy.load();
    return std::string(policy == kOnednnLayouts   ? "onednn"
                       : policy == kTfActivations ? "tf" : "");
  }, "The policy set_layouts took last.");
  m.def("layouts_tuned", []() { return layouts_tuned.load(); },
        "How many configurations were timed in both layouts to pick one.");
  m.def("tuning_seconds", []() { return tuning_ns.load() * 1e-9; },
        "The time those timings took, in all.");
  m.def("primitives_created", []() { return primitives_created.load(); },
        "How many primitives this process has built (each one once).");
  m.def("version", []() {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
           std::to_string(v->patch);
  });
}

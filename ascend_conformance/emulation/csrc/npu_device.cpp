// The emulated `npu` device: PyTorch's PrivateUse1 backend backed by host memory.
//
// Written against PyTorch's documented PrivateUse1 extension points: an allocator
// (REGISTER_ALLOCATOR), a device guard (C10_REGISTER_GUARD_IMPL), the backend hooks
// (RegisterPrivateUse1HooksInterface), the kernels torch needs from every backend
// (empty, empty_strided, copies, views, resize_, set_) and a boxed fallback that runs
// every other op on CPU copies (at::native::cpu_fallback). Tensors live in host memory
// but carry the device `npu:k`, so mixing them with CPU tensors fails as on hardware.
#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <ATen/EmptyTensor.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <c10/core/CPUAllocator.h>
#include <ATen/native/CPUFallback.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/unfold_native.h>
#include <ATen/ops/view_as_complex_native.h>
#include <ATen/ops/view_as_real_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/alloc_cpu.h>

#include <array>
#include <map>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>

namespace {

constexpr int kMaxDevices = 64;
// Device blocks are rounded like a block allocator's, so reserved >= allocated as on hardware.
constexpr int64_t kBlock = 512;

int g_device_count = 0;                  // set once by install(); 0 until then
thread_local c10::DeviceIndex g_current = 0;  // per thread, as a device runtime's current device

struct Stats {
  int64_t allocated = 0, peak_allocated = 0, reserved = 0, peak_reserved = 0;
  int64_t allocations = 0, frees = 0;
};
std::mutex g_stats_mutex;
std::array<Stats, kMaxDevices> g_stats;

std::string device_name(c10::DeviceIndex index) {
  return c10::Device(c10::DeviceType::PrivateUse1, index).str();
}

void check_index(c10::DeviceIndex index) {
  TORCH_CHECK(g_device_count > 0, "the emulated npu device is not installed (device count 0)");
  TORCH_CHECK(index >= 0 && index < g_device_count, device_name(index), " is not an emulated device: ",
              g_device_count, " device(s), ", device_name(0), "..", device_name(g_device_count - 1));
}

int64_t rounded(int64_t nbytes) { return (nbytes + kBlock - 1) / kBlock * kBlock; }

// What a device block remembers for its deleter: where its bytes are counted.
struct Block {
  void* data;
  int64_t nbytes;
  c10::DeviceIndex device;
};

void free_block(void* context) {
  auto* block = static_cast<Block*>(context);
  {
    std::lock_guard<std::mutex> lock(g_stats_mutex);
    Stats& s = g_stats[block->device];
    s.allocated -= block->nbytes;
    s.reserved -= rounded(block->nbytes);
    s.frees += 1;
  }
  c10::free_cpu(block->data);
  delete block;
}

struct EmulatedAllocator final : c10::Allocator {
  // Allocates on the current device: kernels set the device guard to the tensor's device first.
  c10::DataPtr allocate(size_t nbytes) override {
    const c10::DeviceIndex device = g_current;
    check_index(device);
    const c10::Device where(c10::DeviceType::PrivateUse1, device);
    if (nbytes == 0) {
      return c10::DataPtr(nullptr, where);
    }
    void* data = c10::alloc_cpu(nbytes);
    auto* block = new Block{data, static_cast<int64_t>(nbytes), device};
    {
      std::lock_guard<std::mutex> lock(g_stats_mutex);
      Stats& s = g_stats[device];
      s.allocated += block->nbytes;
      s.reserved += rounded(block->nbytes);
      s.peak_allocated = std::max(s.peak_allocated, s.allocated);
      s.peak_reserved = std::max(s.peak_reserved, s.reserved);
      s.allocations += 1;
    }
    return c10::DataPtr(data, block, &free_block, where);
  }

  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }  // the context is needed to free

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

EmulatedAllocator g_allocator;
REGISTER_ALLOCATOR(c10::DeviceType::PrivateUse1, &g_allocator);

struct EmulatedGuard final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return c10::DeviceType::PrivateUse1; }

  c10::Device exchangeDevice(c10::Device device) const override {
    const c10::Device previous = getDevice();
    setDevice(device);
    return previous;
  }
  c10::Device getDevice() const override { return c10::Device(c10::DeviceType::PrivateUse1, g_current); }
  void setDevice(c10::Device device) const override {
    TORCH_CHECK(device.is_privateuseone(), "the npu device guard was handed ", device.str());
    if (device.index() < 0) return;  // "npu" without an index: the current device
    check_index(device.index());
    g_current = device.index();
  }
  void uncheckedSetDevice(c10::Device device) const noexcept override {
    if (device.index() >= 0 && device.index() < g_device_count) g_current = device.index();
  }
  // One stream per device: the work of the emulated device runs synchronously on the host.
  c10::Stream getStream(c10::Device device) const override {
    return c10::Stream(c10::Stream::DEFAULT, device);
  }
  c10::Stream getDefaultStream(c10::Device device) const override {
    return c10::Stream(c10::Stream::DEFAULT, device);
  }
  c10::Stream exchangeStream(c10::Stream stream) const override {
    return c10::Stream(c10::Stream::DEFAULT, stream.device());
  }
  c10::DeviceIndex deviceCount() const noexcept override {
    return static_cast<c10::DeviceIndex>(g_device_count);
  }
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
  void synchronizeDevice(const c10::DeviceIndex) const override {}
};

C10_REGISTER_GUARD_IMPL(PrivateUse1, EmulatedGuard);

void grow_storage(const c10::Storage& storage, size_t nbytes) {
  if (nbytes <= storage.nbytes()) return;
  TORCH_CHECK(storage.resizable(), "cannot grow a non-resizable npu storage of ", storage.nbytes(),
              " bytes to ", nbytes);
  c10::DeviceGuard guard(storage.device());
  c10::DataPtr fresh = g_allocator.allocate(nbytes);
  if (storage.nbytes() > 0) std::memcpy(fresh.get(), storage.data(), storage.nbytes());
  storage.set_data_ptr_noswap(std::move(fresh));
  storage.set_nbytes(nbytes);
}

struct EmulatedHooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return g_device_count > 0; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return static_cast<c10::DeviceIndex>(g_device_count); }
  void setCurrentDevice(c10::DeviceIndex device) const override {
    check_index(device);
    g_current = device;
  }
  c10::DeviceIndex getCurrentDevice() const override { return g_current; }
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex device) const override {
    const auto previous = g_current;
    setCurrentDevice(device);
    return previous;
  }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex device) const override { return exchangeDevice(device); }
  void resizePrivateUse1Bytes(const c10::Storage& storage, size_t nbytes) const override {
    grow_storage(storage, nbytes);
    storage.set_nbytes(nbytes);
  }
  // A non-blocking copy to the host (`t.to("cpu", non_blocking=True)`, as vllm-ascend's dispatchers copy
  // their split sizes) allocates the host tensor pinned. Host memory is this device's memory: the CPU
  // allocator stands for the page-locked one.
  at::Allocator* getPinnedMemoryAllocator() const override { return c10::GetCPUAllocator(); }
};

c10::Device target(std::optional<c10::Device> device) {
  const c10::Device d = device.value_or(c10::Device(c10::DeviceType::PrivateUse1));
  return d.has_index() ? d : c10::Device(c10::DeviceType::PrivateUse1, g_current);
}

const c10::DispatchKeySet kKeys(c10::DispatchKey::PrivateUse1);

at::Tensor empty_memory_format(c10::IntArrayRef size, std::optional<at::ScalarType> dtype,
                               std::optional<at::Layout>, std::optional<c10::Device> device,
                               std::optional<bool>, std::optional<c10::MemoryFormat> memory_format) {
  c10::DeviceGuard guard(target(device));
  return at::detail::empty_generic(size, &g_allocator, kKeys, c10::dtype_or_default(dtype), memory_format);
}

at::Tensor empty_strided(c10::IntArrayRef size, c10::IntArrayRef stride, std::optional<at::ScalarType> dtype,
                         std::optional<at::Layout>, std::optional<c10::Device> device, std::optional<bool>) {
  c10::DeviceGuard guard(target(device));
  return at::detail::empty_strided_generic(size, stride, &g_allocator, kKeys, c10::dtype_or_default(dtype));
}

// A CPU tensor over the same bytes: copies and dtype conversions then use torch's CPU kernels.
at::Tensor host_alias(const at::Tensor& t) {
  if (!t.is_privateuseone()) return t;
  return at::from_blob(t.data_ptr(), t.sizes(), t.strides(), at::TensorOptions().dtype(t.scalar_type()));
}

// copy_ between devices (host<->npu, npu:i<->npu:j) lands here; the CPU copy_ broadcasts `self` to
// `dst` and converts dtypes, as copy_ does on any device.
at::Tensor copy_from(const at::Tensor& self, const at::Tensor& dst, bool /*non_blocking*/) {
  if (dst.numel() == 0) return dst;
  at::Tensor out = host_alias(dst);
  out.copy_(host_alias(self));
  return dst;
}

const at::Tensor& resize_(const at::Tensor& self, c10::IntArrayRef size,
                          std::optional<c10::MemoryFormat> memory_format) {
  auto* impl = self.unsafeGetTensorImpl();
  impl->set_sizes_contiguous(size);
  if (memory_format.has_value() && *memory_format != c10::MemoryFormat::Preserve) {
    impl->empty_tensor_restride(*memory_format);
  }
  if (impl->numel() > 0) {
    grow_storage(self.storage(), (impl->storage_offset() + impl->numel()) * self.itemsize());
  }
  return self;
}

at::Tensor copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  resize_(dst, self.sizes(), std::nullopt);
  return copy_from(self, dst, false);
}

at::Tensor& set_storage(at::Tensor& self, c10::Storage source, int64_t storage_offset, c10::IntArrayRef size,
                        c10::IntArrayRef stride) {
  TORCH_CHECK(source.device().is_privateuseone(), "set_: an npu tensor cannot take a ",
              source.device().str(), " storage");
  auto* impl = self.unsafeGetTensorImpl();
  impl->set_storage_keep_dtype(std::move(source));
  impl->set_storage_offset(storage_offset);
  if (stride.empty()) {
    impl->set_sizes_contiguous(size);
  } else {
    impl->set_sizes_and_strides(size, stride);
  }
  int64_t extent = 1;  // elements up to and including the last one addressed
  bool empty = false;
  for (size_t d = 0; d < size.size(); ++d) {
    if (size[d] == 0) empty = true;
    extent += (size[d] - 1) * impl->strides()[d];
  }
  if (!empty) grow_storage(self.storage(), (storage_offset + extent) * self.itemsize());
  return self;
}

at::Tensor& set_tensor(at::Tensor& self, const at::Tensor& source) {
  return set_storage(self, source.storage(), source.storage_offset(), source.sizes(), source.strides());
}

at::Tensor& set_empty(at::Tensor& self) {
  c10::DeviceGuard guard(self.device());
  c10::Storage storage(c10::Storage::use_byte_size_t(), 0, &g_allocator, /*resizable=*/true);
  return set_storage(self, storage, 0, {0}, {});
}

// Ops whose CPU tensor arguments a device kernel accepts (index tensors are moved by the op).
const std::unordered_set<std::string>& host_index_ops() {
  static const std::unordered_set<std::string> ops = {"aten::index", "aten::index_put_", "aten::index_put",
                                                      "aten::_index_put_impl_"};
  return ops;
}

void note_device(const at::Tensor& t, std::optional<c10::Device>& npu, std::optional<c10::Device>& other) {
  if (!t.defined()) return;
  if (t.is_privateuseone()) {
    if (npu.has_value() && *npu != t.device()) other = t.device();
    if (!npu.has_value()) npu = t.device();
  } else if (t.dim() > 0 || !t.is_cpu()) {  // a 0-dim CPU tensor is a scalar, as on every device
    if (!other.has_value()) other = t.device();
  }
}

// Every op without a kernel of its own: run it on CPU copies (torch's cpu_fallback), after
// checking the inputs are on one npu device and making that device current, so results land
// on the inputs' device (npu:1 inputs give npu:1 outputs).
void fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t count = op.schema().arguments().size();
  std::optional<c10::Device> npu, other;
  for (const c10::IValue& value : torch::jit::last(stack, count)) {
    if (value.isTensor()) {
      note_device(value.toTensor(), npu, other);
    } else if (value.isList()) {
      for (const c10::IValue& item : value.toListRef()) {
        if (item.isTensor()) note_device(item.toTensor(), npu, other);
      }
    }
  }
  if (npu.has_value() && other.has_value() &&
      !(other->is_cpu() && host_index_ops().count(op.schema().name()))) {
    TORCH_CHECK(false, "Expected all tensors to be on the same device, but found at least two devices, ",
                npu->str(), " and ", other->str(), "! (", op.schema().operator_name(), " on the emulated npu)");
  }
  c10::OptionalDeviceGuard guard(npu);
  at::native::cpu_fallback(op, stack, /*error_on_views=*/true);
}

}  // namespace

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", TORCH_FN(empty_memory_format));
  m.impl("empty_strided", TORCH_FN(empty_strided));
  m.impl("_copy_from", TORCH_FN(copy_from));
  m.impl("_copy_from_and_resize", TORCH_FN(copy_from_and_resize));
  m.impl("resize_", TORCH_FN(resize_));
  m.impl("set_.source_Storage_storage_offset", TORCH_FN(set_storage));
  m.impl("set_.source_Tensor", TORCH_FN(set_tensor));
  m.impl("set_", TORCH_FN(set_empty));
  // Views share the storage: they must never reach the fallback, which would copy.
  m.impl("view", TORCH_FN(at::native::view));
  m.impl("as_strided", TORCH_FN(at::native::as_strided_tensorimpl));
  m.impl("_reshape_alias", TORCH_FN(at::native::_reshape_alias));
  m.impl("alias", TORCH_FN(at::native::alias));
  m.impl("unfold", TORCH_FN(at::native::unfold));
  m.impl("view_as_real", TORCH_FN(at::native::view_as_real));
  m.impl("view_as_complex", TORCH_FN(at::native::view_as_complex));
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&fallback>());
}

namespace {

void install(int64_t device_count) {
  TORCH_CHECK(device_count >= 1 && device_count <= kMaxDevices, "emulated npu device count must be in [1, ",
              kMaxDevices, "], got ", device_count);
  TORCH_CHECK(g_device_count == 0 || g_device_count == device_count, "the emulated npu is installed with ",
              g_device_count, " device(s); it cannot become ", device_count);
  if (g_device_count == 0) at::RegisterPrivateUse1HooksInterface(new EmulatedHooks());
  g_device_count = static_cast<int>(device_count);
}

std::map<std::string, int64_t> memory_stats(int64_t device) {
  check_index(static_cast<c10::DeviceIndex>(device));
  std::lock_guard<std::mutex> lock(g_stats_mutex);
  const Stats& s = g_stats[device];
  return {{"allocated", s.allocated}, {"peak_allocated", s.peak_allocated}, {"reserved", s.reserved},
          {"peak_reserved", s.peak_reserved}, {"allocations", s.allocations}, {"frees", s.frees}};
}

void reset_peak(int64_t device) {
  check_index(static_cast<c10::DeviceIndex>(device));
  std::lock_guard<std::mutex> lock(g_stats_mutex);
  Stats& s = g_stats[device];
  s.peak_allocated = s.allocated;
  s.peak_reserved = s.reserved;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "the emulated npu device (PrivateUse1 on host memory) of ascend-conformance";
  m.def("install", &install, "register the backend hooks and set the device count (once per process)");
  m.def("device_count", []() { return g_device_count; });
  m.def("current_device", []() { return static_cast<int64_t>(g_current); });
  m.def("set_device", [](int64_t index) {
    check_index(static_cast<c10::DeviceIndex>(index));
    g_current = static_cast<c10::DeviceIndex>(index);
  });
  m.def("memory_stats", &memory_stats, "allocator figures of one device in bytes (and counts)");
  m.def("reset_peak", &reset_peak, "peak figures of one device back to the current ones");
}

// Runs kernel launches described by src/backend/cuda/emulator.rs on the host
// (cuda_host.h), over buffers standing for device memory:
//   emulate <launches file> <buffers out>
// Input, little-endian: "OPTLABEMU1", u32 buffers, each (u64 bytes, bytes);
// u32 launches, each (u32 name length, name, u32 grid[3], u32 block[3], u32
// shared bytes, u32 args, each (u8 tag, u64 payload)). A pointer is
// (buffer index + 1) << 40 | byte offset, 0 for null. Output: every buffer's
// bytes, in order. A kernel whose parameter types differ from the launch's
// argument tags is an error naming both: the check the driver API cannot make.
#include "cuda_host.h"
#include "common.cuh"
#include "attention.cuh"
#include "mma.cuh"

#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// The kernel modules, each in its own namespace (`modules.inc`), and one
// `OPTLAB_ENTRY(module, kernel)` per entry point (`entries.inc`): both written by
// the emulator from FUNCTIONS in src/backend/cuda/mod.rs.
#include "modules.inc"

namespace {

enum Tag : std::uint8_t { kPtr = 0, kF32 = 1, kI32 = 2, kI64 = 3 };

struct Arg {
    Tag tag;
    std::uint64_t payload;
};

std::vector<std::vector<unsigned char>> g_buffers;
std::string g_kernel;

[[noreturn]] void fail(const std::string& what) { emu::fail((g_kernel + ": " + what).c_str()); }

void* address(std::uint64_t p) {
    if (p == 0) return nullptr;
    const std::uint64_t index = (p >> 40) - 1, offset = p & ((1ull << 40) - 1);
    if (index >= g_buffers.size() || offset > g_buffers[index].size()) fail("pointer outside every buffer");
    return g_buffers[index].data() + offset;
}

template <class P>
P convert(const Arg& a, std::size_t i) {
    auto mismatch = [&](const char* want) { fail("argument " + std::to_string(i) + " is tag " + std::to_string(a.tag) + ", the kernel takes " + want); };
    if constexpr (std::is_pointer_v<P>) {
        if (a.tag != kPtr) mismatch("a pointer");
        return static_cast<P>(address(a.payload));
    } else if constexpr (std::is_same_v<P, float>) {
        if (a.tag != kF32) mismatch("float");
        return std::bit_cast<float>((std::uint32_t)a.payload);
    } else if constexpr (std::is_same_v<P, int>) {
        if (a.tag != kI32) mismatch("int");
        return (int)(std::int32_t)(std::uint32_t)a.payload;
    } else if constexpr (std::is_same_v<P, long long>) {
        if (a.tag != kI64) mismatch("long long");
        return (long long)a.payload;
    } else {
        static_assert(sizeof(P) == 0, "a kernel parameter type the emulator does not pass");
    }
}

struct Entry {
    const char* name;
    std::function<void(const std::vector<Arg>&, dim3, dim3, std::size_t)> run;
};

template <class... P, std::size_t... I>
void call(void (*kernel)(P...), const std::vector<Arg>& args, dim3 grid, dim3 block, std::size_t shared, std::index_sequence<I...>) {
    if (args.size() != sizeof...(P)) fail("takes " + std::to_string(sizeof...(P)) + " arguments, given " + std::to_string(args.size()));
    std::tuple<P...> bound{convert<P>(args[I], I)...};
    emu::launch(grid, block, shared, [&] { kernel(std::get<I>(bound)...); });
}

template <class... P>
Entry entry(const char* name, void (*kernel)(P...)) {
    return {name, [kernel](const std::vector<Arg>& args, dim3 grid, dim3 block, std::size_t shared) {
                call(kernel, args, grid, block, shared, std::index_sequence_for<P...>{});
            }};
}

#define OPTLAB_ENTRY(module, name) entry(#name, &module::name),
const Entry kEntries[] = {
#include "entries.inc"
};

struct Reader {
    std::FILE* f;
    template <class T>
    T get() {
        T v;
        if (std::fread(&v, sizeof v, 1, f) != 1) emu::fail("launch file truncated");
        return v;
    }
    void bytes(void* dst, std::size_t n) {
        if (n && std::fread(dst, 1, n, f) != n) emu::fail("launch file truncated");
    }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) emu::fail("usage: emulate <launches> <buffers out>");
    std::FILE* in = std::fopen(argv[1], "rb");
    if (!in) emu::fail("cannot open the launch file");
    Reader r{in};
    char magic[10];
    r.bytes(magic, sizeof magic);
    if (std::memcmp(magic, "OPTLABEMU1", sizeof magic) != 0) emu::fail("not a launch file");
    g_buffers.resize(r.get<std::uint32_t>());
    for (auto& b : g_buffers) {
        b.resize(r.get<std::uint64_t>());
        r.bytes(b.data(), b.size());
    }
    for (std::uint32_t n = r.get<std::uint32_t>(); n > 0; --n) {
        g_kernel.resize(r.get<std::uint32_t>());
        r.bytes(g_kernel.data(), g_kernel.size());
        dim3 grid{r.get<std::uint32_t>(), r.get<std::uint32_t>(), r.get<std::uint32_t>()};
        dim3 block{r.get<std::uint32_t>(), r.get<std::uint32_t>(), r.get<std::uint32_t>()};
        const std::size_t shared = r.get<std::uint32_t>();
        std::vector<Arg> args(r.get<std::uint32_t>());
        for (auto& a : args) a = {Tag(r.get<std::uint8_t>()), r.get<std::uint64_t>()};
        const Entry* e = nullptr;
        for (const Entry& k : kEntries)
            if (g_kernel == k.name) e = &k;
        if (!e) fail("no such kernel");
        e->run(args, grid, block, shared);
    }
    std::fclose(in);
    std::FILE* out = std::fopen(argv[2], "wb");
    if (!out) emu::fail("cannot write the buffers");
    for (const auto& b : g_buffers)
        if (!b.empty() && std::fwrite(b.data(), 1, b.size(), out) != b.size()) emu::fail("cannot write the buffers");
    return std::fclose(out) == 0 ? 0 : 1;
}

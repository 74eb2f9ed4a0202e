// Crash-safe file replacement: write to a temporary name in the same directory, fsync, rename over
// the target, fsync the directory. A reader sees the old file or the new one, never a mix.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace sq::io {

// Streams the content through `write` (called once with a sink that appends bytes).
using ByteSink = std::function<void(const void* data, std::size_t size)>;
void write_file_atomic(const std::string& path, const std::function<void(const ByteSink&)>& write);
void write_file_atomic(const std::string& path, std::string_view content);
// Renames and fsyncs the directory of `to`.
void rename_durable(const std::string& from, const std::string& to);
std::string read_text_file(const std::string& path);  // throws naming the file

}  // namespace sq::io

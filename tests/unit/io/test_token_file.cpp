// Tests for io/token_file: .npy round trips and NumPy-made fixtures, raw .u16/.u32 streams, and
// the refusals (truncation, bad header, out-of-range ids, unknown extensions).
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/token_file.h"

namespace sq::io {
namespace {

const std::string kFixtures = SQ_TEST_DATA_DIR "/tokens";

std::string temp_path(const std::string& name) {
  const std::string dir = std::string(SQ_TEST_TMP_DIR) + "/token_file";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/" + name;
  std::filesystem::remove(path);
  return path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A .npy v1.0 file with the given header dict and payload (header padded like NumPy's).
std::string npy(const std::string& dict, const std::string& payload) {
  std::string header = dict;
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xFF);
  out += static_cast<char>(header.size() >> 8);
  return out + header + payload;
}

std::string le_bytes(std::uint64_t value, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += static_cast<char>((value >> (8 * i)) & 0xFF);
  return out;
}

// Asserts read_tokens refuses `path` and that the error names the file and every one of `parts`.
void expect_refused(const std::string& path, std::initializer_list<std::string> parts) {
  try {
    read_tokens(path);
    ADD_FAILURE() << "accepted " << path;
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.context().file, path);
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    for (const std::string& part : parts) {
      EXPECT_NE(what.find(part), std::string::npos) << "'" << part << "' not in: " << what;
    }
  }
}

TEST(TokenFileNpy, RoundTripU16) {
  const std::string path = temp_path("u16.npy");
  const std::vector<std::uint32_t> tokens = {0, 1, 65535, 300, 7, 8};
  write_tokens_npy(path, tokens, 2, 3);
  const std::string bytes = read_bytes(path);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  EXPECT_NE(bytes.find("'descr': '<u2'"), std::string::npos);
  EXPECT_NE(bytes.find("'shape': (2, 3)"), std::string::npos);
  // Data starts at a multiple of 64, right after the header's final newline.
  const std::size_t data_offset = bytes.size() - tokens.size() * 2;
  EXPECT_EQ(data_offset % 64, 0u);
  EXPECT_EQ(bytes[data_offset - 1], '\n');
  const TokenData back = read_tokens(path);
  EXPECT_EQ(back.tokens, tokens);
  EXPECT_EQ(back.seq_len, 3);
}

TEST(TokenFileNpy, RoundTripU32WhenAnIdNeedsIt) {
  const std::string path = temp_path("u32.npy");
  const std::vector<std::uint32_t> tokens = {1, 65536, 4294967295u, 128255};
  write_tokens_npy(path, tokens, 1, 4);
  const std::string bytes = read_bytes(path);
  EXPECT_NE(bytes.find("'descr': '<u4'"), std::string::npos);
  EXPECT_EQ((bytes.size() - tokens.size() * 4) % 64, 0u);
  const TokenData back = read_tokens(path);
  EXPECT_EQ(back.tokens, tokens);
  EXPECT_EQ(back.seq_len, 4);
}

TEST(TokenFileNpy, RoundTripLargerThanOneChunk) {
  const std::string path = temp_path("big.npy");
  std::vector<std::uint32_t> tokens(3 * 50000);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::uint32_t>(i * 7);
  write_tokens_npy(path, tokens, 3, 50000);
  const TokenData back = read_tokens(path);
  EXPECT_EQ(back.tokens, tokens);
  EXPECT_EQ(back.seq_len, 50000);
}

TEST(TokenFileNpy, EmptyArrayRoundTrips) {
  const std::string path = temp_path("empty.npy");
  write_tokens_npy(path, {}, 0, 16);
  const TokenData back = read_tokens(path);
  EXPECT_TRUE(back.tokens.empty());
  EXPECT_EQ(back.seq_len, 16);
}

TEST(TokenFileNpy, WriteRefusesAShapeThatDoesNotFit) {
  const std::vector<std::uint32_t> tokens = {1, 2, 3};
  EXPECT_THROW(write_tokens_npy(temp_path("bad_shape.npy"), tokens, 2, 2), Error);
  EXPECT_THROW(write_tokens_npy(temp_path("bad_shape.npy"), tokens, -1, -3), Error);
}

TEST(TokenFileNpy, OneDimensionalIsAStream) {
  const std::string path = temp_path("flat.npy");
  write_bytes(path, npy("{'descr': '<u4', 'fortran_order': False, 'shape': (3,), }",
                        le_bytes(10, 4) + le_bytes(70000, 4) + le_bytes(3, 4)));
  const TokenData t = read_tokens(path);
  EXPECT_EQ(t.tokens, (std::vector<std::uint32_t>{10, 70000, 3}));
  EXPECT_EQ(t.seq_len, 0);
}

TEST(TokenFileNpy, ReadsNumpyFixtures) {
  // Made by tests/data/tokens/make_fixture.py with NumPy.
  const TokenData wide = read_tokens(kFixtures + "/ids.npy");  // int64 [3, 4]
  EXPECT_EQ(wide.seq_len, 4);
  EXPECT_EQ(wide.tokens, (std::vector<std::uint32_t>{0, 1, 2, 3, 65535, 65536, 128255, 4294967295u,
                                                     7, 11, 13, 17}));
  const TokenData narrow = read_tokens(kFixtures + "/ids_u2.npy");  // uint16 [5]
  EXPECT_EQ(narrow.seq_len, 0);
  EXPECT_EQ(narrow.tokens, (std::vector<std::uint32_t>{5, 0, 65535, 42, 31999}));
  const TokenData v2 = read_tokens(kFixtures + "/ids_v2.npy");  // format 2.0, int32 [2, 3]
  EXPECT_EQ(v2.seq_len, 3);
  EXPECT_EQ(v2.tokens, (std::vector<std::uint32_t>{1, 2, 3, 100000, 200000, 300000}));
}

TEST(TokenFileNpy, TruncatedDataIsRefused) {
  const std::string good = read_bytes(kFixtures + "/ids.npy");
  const std::string path = temp_path("truncated.npy");
  write_bytes(path, good.substr(0, good.size() - 3));
  expect_refused(path, {"truncated", "(3, 4)"});
  write_bytes(path, good.substr(0, 40));  // inside the header
  expect_refused(path, {"truncated"});
  write_bytes(path, good + "xx");  // trailing bytes are as wrong as missing ones
  expect_refused(path, {"needs 96"});
}

TEST(TokenFileNpy, BadMagicIsRefused) {
  std::string bytes = read_bytes(kFixtures + "/ids_u2.npy");
  bytes[1] = 'X';
  const std::string path = temp_path("magic.npy");
  write_bytes(path, bytes);
  expect_refused(path, {"not a .npy file"});
  write_bytes(path, "abc");
  expect_refused(path, {"not a .npy file", "3 bytes"});
}

TEST(TokenFileNpy, UnsupportedVersionIsRefused) {
  std::string bytes = read_bytes(kFixtures + "/ids_u2.npy");
  bytes[6] = '\x04';
  const std::string path = temp_path("version.npy");
  write_bytes(path, bytes);
  expect_refused(path, {"version 4.0"});
}

TEST(TokenFileNpy, FortranOrderIsRefused) {
  const std::string path = temp_path("fortran.npy");
  write_bytes(path, npy("{'descr': '<u2', 'fortran_order': True, 'shape': (2, 2), }",
                        std::string(8, '\0')));
  expect_refused(path, {"fortran_order"});
}

TEST(TokenFileNpy, NegativeIdIsRefusedNamingTheIndex) {
  const std::string path = temp_path("negative.npy");
  write_bytes(path, npy("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }",
                        le_bytes(1, 8) + le_bytes(2, 8) + le_bytes(3, 8) +
                            le_bytes(static_cast<std::uint64_t>(-5), 8)));
  expect_refused(path, {"index 3", "sequence 1, position 1", "-5"});
}

TEST(TokenFileNpy, IdBeyondUint32IsRefused) {
  const std::string path = temp_path("huge.npy");
  write_bytes(path, npy("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
                        le_bytes(1, 8) + le_bytes(std::uint64_t{1} << 32, 8)));
  expect_refused(path, {"index 1", "4294967296"});
}

TEST(TokenFileNpy, NegativeInt32IsRefused) {
  const std::string path = temp_path("negative32.npy");
  write_bytes(path, npy("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }",
                        le_bytes(0xFFFFFFFFu, 4)));
  expect_refused(path, {"index 0", "-1"});
}

TEST(TokenFileNpy, BadHeadersAreRefused) {
  const std::string path = temp_path("header.npy");
  write_bytes(
      path, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", std::string(4, '\0')));
  expect_refused(path, {"'<f4'"});
  write_bytes(
      path, npy("{'descr': '>u2', 'fortran_order': False, 'shape': (1,), }", std::string(2, '\0')));
  expect_refused(path, {"'>u2'"});
  write_bytes(path, npy("{'descr': '<u2', 'fortran_order': False, 'shape': (1, 1, 1), }",
                        std::string(2, '\0')));
  expect_refused(path, {"(1, 1, 1)"});
  write_bytes(path,
              npy("{'descr': '<u2', 'fortran_order': False, 'shape': (), }", std::string(2, '\0')));
  expect_refused(path, {"shape"});
  write_bytes(path, npy("{'descr': '<u2', 'shape': (1,), }", std::string(2, '\0')));
  expect_refused(path, {"fortran_order"});
  write_bytes(path, npy("{'descr': '<u2', 'fortran_order': False, 'shape': (1,), 'x': 1}",
                        std::string(2, '\0')));
  expect_refused(path, {"'x'"});
  write_bytes(path, npy("{'descr': [('a', '<u2')], 'fortran_order': False, 'shape': (1,), }",
                        std::string(2, '\0')));
  expect_refused(path, {"structured"});
  write_bytes(
      path, npy("{'descr': '<u2', 'fortran_order': Maybe, 'shape': (1,), }", std::string(2, '\0')));
  expect_refused(path, {"True or False"});
}

TEST(TokenFileRaw, U16AndU32) {
  const std::string p16 = temp_path("stream.u16");
  write_bytes(p16, le_bytes(1, 2) + le_bytes(65535, 2) + le_bytes(258, 2));
  const TokenData a = read_tokens(p16);
  EXPECT_EQ(a.tokens, (std::vector<std::uint32_t>{1, 65535, 258}));
  EXPECT_EQ(a.seq_len, 0);

  const std::string p32 = temp_path("stream.u32");
  write_bytes(p32, le_bytes(4294967295u, 4) + le_bytes(128000, 4));
  EXPECT_EQ(read_tokens(p32).tokens, (std::vector<std::uint32_t>{4294967295u, 128000}));
}

TEST(TokenFileRaw, EmptyFileHasNoTokens) {
  const std::string path = temp_path("empty.u32");
  write_bytes(path, "");
  EXPECT_TRUE(read_tokens(path).tokens.empty());
}

TEST(TokenFileRaw, TruncatedRawIsRefused) {
  const std::string p16 = temp_path("odd.u16");
  write_bytes(p16, std::string(5, '\x01'));
  expect_refused(p16, {"5 bytes", "multiple of 2"});
  const std::string p32 = temp_path("odd.u32");
  write_bytes(p32, std::string(6, '\x01'));
  expect_refused(p32, {"6 bytes", "multiple of 4"});
}

TEST(TokenFile, UnknownExtensionIsRefused) {
  const std::string path = temp_path("tokens.bin");
  write_bytes(path, std::string(4, '\0'));
  expect_refused(path, {"'.bin'", ".u16", ".u32", ".npy"});
  expect_refused(temp_path("no_extension"), {"''", ".npy"});
}

TEST(TokenFile, MissingFileIsRefused) {
  const std::string path = temp_path("missing.u16");
  EXPECT_THROW(read_tokens(path), Error);
}

}  // namespace
}  // namespace sq::io

#include "adapters_store/adapter_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "adapters_store/sqlite_registry.h"
#include "gtest/gtest.h"
#include "tests/store/store_test_util.h"

namespace adapterd {
namespace {

using testing::FilesUnder;
using testing::LoraFiles;
using testing::OptionsAt;
using testing::SpecFor;
using testing::TempDir;
using testing::Upload;
using testing::WriteFiles;
using Files = std::map<std::string, std::string>;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class AdapterStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  void Reopen(StoreOptions options) {
    store_.reset();
    auto opened = AdapterStore::Open(std::move(options), &report_);
    ASSERT_TRUE(opened.ok()) << opened.status();
    store_ = *std::move(opened);
  }
  void Reopen() { Reopen(OptionsAt(tmp_ / "data")); }

  // Everything on disk that the store owns, for "nothing else changed" checks.
  std::vector<std::string> Snapshot() const {
    std::vector<std::string> files = FilesUnder(tmp_ / "data/blobs");
    for (const std::string& f : FilesUnder(tmp_ / "data/adapters")) files.push_back("v/" + f);
    for (const std::string& f : FilesUnder(tmp_ / "data/uploads")) files.push_back("u/" + f);
    ListPage page = *store_->List({.owner = "t", .page_size = 1000});
    for (const auto& r : page.records)
      files.push_back("r/" + r.name + "@" + std::to_string(r.version));
    return files;
  }

  TempDir tmp_;
  OpenReport report_;
  std::unique_ptr<AdapterStore> store_;
};

TEST_F(AdapterStoreTest, UploadedAdapterCanBeFetchedListedAndResolvedToItsFiles) {
  const Files files = LoraFiles(1);
  absl::StatusOr<AdapterRecord> rec = Upload(*store_, SpecFor("t", "sum", files), files);
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->version, 1);
  EXPECT_EQ(rec->state, AdapterState::kReady);
  EXPECT_EQ(rec->method, "lora");
  EXPECT_EQ(rec->adapter_id.size(), 32u);
  EXPECT_EQ(rec->files.size(), 2u);
  EXPECT_EQ(rec->sha256, ManifestDigest(rec->files));

  EXPECT_EQ(store_->Get("t", "sum")->sha256, rec->sha256);
  EXPECT_EQ(store_->Get("t", "sum@1")->version, 1);
  EXPECT_EQ(store_->List({.owner = "t"})->records.size(), 1u);

  absl::StatusOr<ResolvedAdapter> resolved = store_->Resolve("t", "sum");
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  for (const auto& [name, data] : files) EXPECT_EQ(Slurp(resolved->dir + "/" + name), data);
  EXPECT_TRUE(store_->VerifyFiles(resolved->record).ok());
  EXPECT_TRUE(FilesUnder(tmp_ / "data/uploads").empty());
}

TEST_F(AdapterStoreTest, ANewUploadIsTheNextVersionAndTheNameFollowsIt) {
  const Files v1 = LoraFiles(1), v2 = LoraFiles(2);
  ASSERT_TRUE(Upload(*store_, SpecFor("t", "a", v1), v1).ok());
  ASSERT_TRUE(Upload(*store_, SpecFor("t", "a", v2), v2).ok());
  EXPECT_EQ(store_->Get("t", "a")->version, 2);
  absl::StatusOr<ResolvedAdapter> old = store_->Resolve("t", "a@1");
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(Slurp(old->dir + "/adapter_model.safetensors"), v1.at("adapter_model.safetensors"));
}

TEST_F(AdapterStoreTest, ATruncatedUploadFailsAtCommitAndLeavesNothing) {
  const Files files = LoraFiles(1);
  const auto before = Snapshot();
  absl::StatusOr<std::string> id = store_->BeginUpload(SpecFor("t", "a", files));
  ASSERT_TRUE(id.ok());
  const std::string& w = files.at("adapter_model.safetensors");
  ASSERT_TRUE(
      store_->AppendUpload(*id, "adapter_config.json", 0, files.at("adapter_config.json")).ok());
  ASSERT_TRUE(
      store_->AppendUpload(*id, "adapter_model.safetensors", 0, w.substr(0, w.size() / 2)).ok());
  absl::Status s = store_->CommitUpload(*id).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("incomplete"), std::string::npos);
  EXPECT_EQ(store_->Get("t", "a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Snapshot(), before);
  // The upload is gone.
  EXPECT_EQ(store_->CommitUpload(*id).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(AdapterStoreTest, OverSizeUploadsAreResourceExhaustedAndBytesBeyondTheDeclaredSizeInvalid) {
  StoreOptions options = OptionsAt(tmp_ / "data");
  options.max_adapter_bytes = 1000;
  Reopen(options);
  const Files files = LoraFiles(1, 4, 64);  // > 1000 bytes of weights.
  const auto before = Snapshot();
  absl::Status s = store_->BeginUpload(SpecFor("t", "a", files)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("1000"), std::string::npos);

  // A client that sends more than it declared.
  const Files small = LoraFiles(1, 2, 4);
  UploadSpec spec = SpecFor("t", "a", small);
  absl::StatusOr<std::string> id = store_->BeginUpload(spec);
  ASSERT_TRUE(id.ok()) << id.status();
  const std::string config = small.at("adapter_config.json");
  s = store_->AppendUpload(*id, "adapter_config.json", 0, config + "extra");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(store_->AppendUpload(*id, "adapter_config.json", 0, config).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Snapshot(), before);
}

TEST_F(AdapterStoreTest, AChecksumMismatchIsInvalidArgumentAndChangesNothing) {
  const Files good = LoraFiles(1);
  ASSERT_TRUE(Upload(*store_, SpecFor("t", "a", good), good).ok());
  const auto before = Snapshot();
  const Files files = LoraFiles(2);
  UploadSpec spec = SpecFor("t", "a", files);
  spec.files[1].sha256 = Sha256::Hex("something else");
  absl::Status s = Upload(*store_, spec, files).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("checksum mismatch"), std::string::npos);
  // The whole-adapter digest is checked too.
  spec = SpecFor("t", "a", files);
  spec.sha256 = Sha256::Hex("not the manifest");
  s = Upload(*store_, spec, files).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(Snapshot(), before);
  EXPECT_EQ(store_->Get("t", "a")->version, 1);
  // Negative control: the right manifest digest passes.
  spec = SpecFor("t", "a", files);
  std::vector<AdapterFile> manifest;
  for (const auto& f : spec.files) manifest.push_back({f.name, f.sha256, f.size});
  spec.sha256 = ManifestDigest(manifest);
  EXPECT_TRUE(Upload(*store_, spec, files).ok());
}

TEST_F(AdapterStoreTest, BadNamesAreInvalidArgumentEverywhere) {
  const Files files = LoraFiles(1);
  for (const std::string name :
       {std::string("a/b"), std::string(".."), std::string("../x"), std::string("a\0b", 3),
        std::string(300, 'n'), std::string(""), std::string(".hidden")}) {
    EXPECT_EQ(store_->BeginUpload(SpecFor("t", name, files)).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->Get("t", name).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->Delete("t", name, 0).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->Resolve("t", name).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(Snapshot().empty());
}

TEST_F(AdapterStoreTest, PickleAndUnknownFilesAreRefusedAtBegin) {
  Files files = LoraFiles(1);
  files["adapter_model.bin"] = "\x80\x04pickle";
  absl::Status s = store_->BeginUpload(SpecFor("t", "a", files)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("pickle"), std::string::npos) << s;
  files = LoraFiles(1);
  files["../escape"] = "x";
  EXPECT_EQ(store_->BeginUpload(SpecFor("t", "a", files)).status().code(),
            absl::StatusCode::kInvalidArgument);
  files = {{"adapter_model.safetensors", LoraFiles(1).at("adapter_model.safetensors")}};
  EXPECT_EQ(store_->BeginUpload(SpecFor("t", "a", files)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The AdapterFusion layout a training job writes: two files at the top and
// one subdirectory per fused adapter. Published through the internal path,
// kept through a restart, and nothing outside the accepted names comes along.
TEST_F(AdapterStoreTest, PublishDirectoryTakesTheFusionLayoutAndNothingElse) {
  StoreOptions options = OptionsAt(tmp_ / "data");
  std::vector<std::string> validated;
  options.validator = [&validated](const std::string& dir) -> absl::StatusOr<AdapterMeta> {
    validated = FilesUnder(dir);
    return AdapterMeta{"fusion", ""};
  };
  Reopen(options);
  const std::string out = tmp_ / "job/output";
  const Files child = LoraFiles(3);
  WriteFiles(out, {{"adapter_fusion_config.json", "{\"key\": true}"},
                   {"model_adapter_fusion.safetensors", child.at("adapter_model.safetensors")},
                   {"README.md", "not an adapter file"},
                   {"pytorch_model_adapter_fusion.bin", "pickle"}});
  WriteFiles(out + "/sentiment", {{"adapter_config.json", child.at("adapter_config.json")},
                                  {"adapter.safetensors", child.at("adapter_model.safetensors")}});
  WriteFiles(out + "/nli", {{"adapter_config.json", "{}"}, {"adapter.safetensors", "w"}});
  WriteFiles(out + "/nli/deeper", {{"adapter.safetensors", "too deep"}});
  WriteFiles(out + "/.hidden", {{"adapter.safetensors", "hidden"}});
  WriteFiles(tmp_ / "outside", {{"secret", "secret"}});
  ASSERT_EQ(
      ::symlink((tmp_ / "outside/secret").c_str(), (out + "/prompt_encoder.safetensors").c_str()),
      0);
  absl::StatusOr<AdapterRecord> record = store_->PublishDirectory("t", "fused", out, "");
  ASSERT_TRUE(record.ok()) << record.status();
  const std::vector<std::string> expected = {
      "adapter_fusion_config.json",    "model_adapter_fusion.safetensors",
      "nli/adapter.safetensors",       "nli/adapter_config.json",
      "sentiment/adapter.safetensors", "sentiment/adapter_config.json"};
  EXPECT_EQ(validated, expected);
  std::vector<std::string> names;
  for (const AdapterFile& f : record->files) names.push_back(f.name);
  EXPECT_EQ(names, expected);
  EXPECT_EQ(record->method, "fusion");
  absl::StatusOr<ResolvedAdapter> resolved = store_->Resolve("t", "fused");
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(FilesUnder(resolved->dir), expected);
  EXPECT_EQ(Slurp(resolved->dir + "/sentiment/adapter.safetensors"),
            child.at("adapter_model.safetensors"));
  const std::string dir = resolved->dir;
  resolved->pin.reset();
  // A lost version directory is rebuilt, subdirectories included.
  std::filesystem::remove_all(dir);
  Reopen(options);
  EXPECT_EQ(report_.dirs_rebuilt, 1);
  EXPECT_EQ(FilesUnder(dir), expected);
  // The same directory again is the next version; a bad name is refused.
  EXPECT_EQ(store_->PublishDirectory("t", "fused", out, "")->version, 2);
  EXPECT_EQ(store_->PublishDirectory("t", "../x", out, "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(AdapterStoreTest, ADuplicateVersionIsAlreadyExistsAndKeepsTheOriginal) {
  const Files v3 = LoraFiles(3);
  ASSERT_EQ(Upload(*store_, SpecFor("t", "a", v3, 3), v3)->version, 3);
  const auto before = Snapshot();
  const Files other = LoraFiles(4);
  EXPECT_EQ(Upload(*store_, SpecFor("t", "a", other, 3), other).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Snapshot(), before);
  EXPECT_EQ(store_->Get("t", "a@3")->sha256, Upload(*store_, SpecFor("t", "b", v3), v3)->sha256);
  // The next unpinned version follows the highest.
  EXPECT_EQ(Upload(*store_, SpecFor("t", "a", other), other)->version, 4);
}

TEST_F(AdapterStoreTest, AnAdapterThatFailsValidationNeverBecomesVisible) {
  Files files = LoraFiles(1);
  std::string& w = files["adapter_model.safetensors"];
  w[8] = 'x';  // Breaks the header JSON.
  const auto before = Snapshot();
  absl::Status s = Upload(*store_, SpecFor("t", "a", files), files).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(Snapshot(), before);
  // A method hint that does not match.
  files = LoraFiles(1);
  UploadSpec spec = SpecFor("t", "a", files);
  spec.method_hint = "prefix_tuning";
  s = Upload(*store_, spec, files).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(Snapshot(), before);
}

TEST_F(AdapterStoreTest, AWrongWriteOffsetIsInvalidArgument) {
  const Files files = LoraFiles(1);
  absl::StatusOr<std::string> id = store_->BeginUpload(SpecFor("t", "a", files));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(store_->AppendUpload(*id, "adapter_config.json", 5, "xx").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(FilesUnder(tmp_ / "data/uploads").empty());
}

TEST_F(AdapterStoreTest, RegisterFromPathReadsOnlyUnderTheAllowedRoots) {
  const std::string root = tmp_ / "models";
  WriteFiles(root + "/good", LoraFiles(5));
  WriteFiles(tmp_ / "outside", LoraFiles(6));
  std::filesystem::create_directories(root + "/sneaky");
  std::filesystem::create_symlink(tmp_ / "outside", root + "/escape");
  std::filesystem::create_symlink(tmp_ / "outside/adapter_model.safetensors",
                                  root + "/sneaky/adapter_model.safetensors");
  WriteFiles(root + "/sneaky", {{"adapter_config.json", testing::LoraConfig()}});
  WriteFiles(root + "/pickle",
             {{"adapter_config.json", testing::LoraConfig()}, {"adapter_model.bin", "\x80\x04"}});

  EXPECT_EQ(store_->RegisterFromPath("t", "a", 0, root + "/good", "").status().code(),
            absl::StatusCode::kFailedPrecondition);  // No roots configured.

  StoreOptions options = OptionsAt(tmp_ / "data");
  options.allowed_roots = {root};
  Reopen(options);
  absl::StatusOr<AdapterRecord> rec = store_->RegisterFromPath("t", "a", 0, root + "/good", "lora");
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->method, "lora");
  const auto before = Snapshot();
  for (const std::string& bad : {root + "/escape", root + "/sneaky", root + "/../outside",
                                 root + "/good/../../outside", std::string("/etc")}) {
    EXPECT_EQ(store_->RegisterFromPath("t", "b", 0, bad, "").status().code(),
              absl::StatusCode::kPermissionDenied)
        << bad;
  }
  EXPECT_EQ(store_->RegisterFromPath("t", "b", 0, root + "/absent", "").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->RegisterFromPath("t", "b", 0, "relative/path", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status s = store_->RegisterFromPath("t", "b", 0, root + "/pickle", "").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("pickle"), std::string::npos) << s;
  EXPECT_EQ(Snapshot(), before);
}

// A fusion registered from a server path: the same files PublishDirectory
// takes, a fused adapter's subdirectory may be a symlink within the roots,
// never one that leads out of them.
TEST_F(AdapterStoreTest, RegisterFromPathTakesTheFusionLayoutWithinTheRoots) {
  const std::string root = tmp_ / "models";
  std::filesystem::create_directories(root);
  StoreOptions options = OptionsAt(tmp_ / "data");
  options.allowed_roots = {root};
  options.validator = [](const std::string&) -> absl::StatusOr<AdapterMeta> {
    return AdapterMeta{"fusion", ""};
  };
  Reopen(options);
  const Files child = LoraFiles(4);
  const Files fusion = {{"adapter_fusion_config.json", "{\"key\": true}"},
                        {"model_adapter_fusion.safetensors", child.at("adapter_model.safetensors")},
                        {"README.md", "not an adapter file"}};
  const Files child_files = {{"adapter_config.json", child.at("adapter_config.json")},
                             {"adapter.safetensors", child.at("adapter_model.safetensors")}};
  WriteFiles(root + "/fused", fusion);
  WriteFiles(root + "/fused/sentiment", child_files);
  WriteFiles(root + "/shared/nli", child_files);
  std::filesystem::create_symlink(root + "/shared/nli", root + "/fused/nli");
  absl::StatusOr<AdapterRecord> rec = store_->RegisterFromPath("t", "f", 0, root + "/fused", "");
  ASSERT_TRUE(rec.ok()) << rec.status();
  std::vector<std::string> names;
  for (const AdapterFile& f : rec->files) names.push_back(f.name);
  const std::vector<std::string> expected = {
      "adapter_fusion_config.json",    "model_adapter_fusion.safetensors",
      "nli/adapter.safetensors",       "nli/adapter_config.json",
      "sentiment/adapter.safetensors", "sentiment/adapter_config.json"};
  EXPECT_EQ(names, expected);
  absl::StatusOr<ResolvedAdapter> resolved = store_->Resolve("t", "f");
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(Slurp(resolved->dir + "/nli/adapter.safetensors"), child.at("adapter_model.safetensors"));

  WriteFiles(tmp_ / "outside/nli", child_files);
  WriteFiles(root + "/leaky", fusion);
  std::filesystem::create_symlink(tmp_ / "outside/nli", root + "/leaky/nli");
  const auto before = Snapshot();
  EXPECT_EQ(store_->RegisterFromPath("t", "g", 0, root + "/leaky", "").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Snapshot(), before);
}

TEST_F(AdapterStoreTest, DeleteRemovesOneVersionOrAllAndReclaimsTheFiles) {
  const Files v1 = LoraFiles(1), v2 = LoraFiles(2);
  ASSERT_TRUE(Upload(*store_, SpecFor("t", "a", v1), v1).ok());
  ASSERT_TRUE(Upload(*store_, SpecFor("t", "a", v2), v2).ok());
  ASSERT_EQ(store_->Delete("t", "a", 2)->size(), 1u);
  EXPECT_EQ(store_->Get("t", "a@2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Get("t", "a")->version, 1);  // The name falls back to the latest READY.
  EXPECT_EQ(store_->Delete("t", "a", 2).status().code(), absl::StatusCode::kNotFound);
  ASSERT_EQ(store_->Delete("t", "a", 0)->size(), 1u);
  EXPECT_EQ(store_->Get("t", "a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(FilesUnder(tmp_ / "data/blobs").empty());
  EXPECT_TRUE(FilesUnder(tmp_ / "data/adapters").empty());
  EXPECT_EQ(store_->Delete("t", "a", 0).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(AdapterStoreTest, AdaptersSharingABlobKeepItUntilTheLastIsDeleted) {
  const Files files = LoraFiles(1);
  ASSERT_TRUE(Upload(*store_, SpecFor("t", "a", files), files).ok());
  ASSERT_TRUE(Upload(*store_, SpecFor("t", "b", files), files).ok());
  EXPECT_EQ(FilesUnder(tmp_ / "data/blobs").size(), 2u);
  ASSERT_TRUE(store_->Delete("t", "a", 0).ok());
  absl::StatusOr<ResolvedAdapter> b = store_->Resolve("t", "b");
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(store_->VerifyFiles(b->record).ok());
  EXPECT_EQ(FilesUnder(tmp_ / "data/blobs").size(), 2u);
}

TEST_F(AdapterStoreTest, DeletingAResolvedVersionKeepsItsFilesUntilThePinIsReleased) {
  const Files files = LoraFiles(1);
  ASSERT_TRUE(Upload(*store_, SpecFor("t", "a", files), files).ok());
  absl::StatusOr<ResolvedAdapter> in_use = store_->Resolve("t", "a");
  ASSERT_TRUE(in_use.ok());
  EXPECT_EQ(store_->Stats().pinned_versions, 1);
  ASSERT_TRUE(store_->Delete("t", "a", 0).ok());
  // New lookups fail at once; the running user still reads its files.
  EXPECT_EQ(store_->Resolve("t", "a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Slurp(in_use->dir + "/adapter_config.json"), files.at("adapter_config.json"));
  const std::string dir = in_use->dir;
  in_use->pin.reset();
  EXPECT_FALSE(std::filesystem::exists(dir));
  EXPECT_TRUE(FilesUnder(tmp_ / "data/blobs").empty());
  EXPECT_EQ(store_->Stats().pinned_versions, 0);
}

TEST_F(AdapterStoreTest, DeleteListenersHearEveryDeletedVersionOnce) {
  std::vector<std::string> heard;
  store_->AddDeleteListener([&](const AdapterRecord& r) {
    heard.push_back(r.adapter_id + "/" + std::to_string(r.version));
  });
  const Files v1 = LoraFiles(1), v2 = LoraFiles(2);
  const AdapterRecord a1 = *Upload(*store_, SpecFor("t", "a", v1), v1);
  ASSERT_TRUE(Upload(*store_, SpecFor("t", "a", v2), v2).ok());
  EXPECT_FALSE(store_->Delete("t", "zzz", 0).ok());
  EXPECT_TRUE(heard.empty());
  ASSERT_TRUE(store_->Delete("t", "a", 0).ok());
  EXPECT_EQ(heard, (std::vector<std::string>{a1.adapter_id + "/1", a1.adapter_id + "/2"}));
}

TEST_F(AdapterStoreTest, AnotherTenantsAdapterLooksExactlyLikeAMissingOne) {
  const Files files = LoraFiles(1);
  ASSERT_TRUE(Upload(*store_, SpecFor("alice", "a", files), files).ok());
  absl::Status theirs = store_->Get("bob", "a").status();
  absl::Status missing = store_->Get("bob", "zzz").status();
  EXPECT_EQ(theirs.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Resolve("bob", "a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete("bob", "a", 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(std::string(theirs.message()).replace(theirs.message().find(" a "), 3, " zzz "),
            missing.message());
  EXPECT_TRUE(store_->Get("alice", "a").ok());
}

TEST_F(AdapterStoreTest, AcknowledgedAdaptersSurviveReopenWithValidChecksums) {
  const Files files = LoraFiles(1);
  AdapterRecord rec = *Upload(*store_, SpecFor("t", "a", files), files);
  Reopen();
  absl::StatusOr<ResolvedAdapter> r = store_->Resolve("t", "a");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->record.sha256, rec.sha256);
  EXPECT_EQ(r->record.adapter_id, rec.adapter_id);
  EXPECT_TRUE(store_->VerifyFiles(r->record).ok());
  EXPECT_EQ(report_.blobs_removed, 0);
  EXPECT_EQ(report_.dirs_removed, 0);
}

TEST_F(AdapterStoreTest, OpenCleansUpWhatACrashLeftHalfDone) {
  const Files kept = LoraFiles(1);
  AdapterRecord rec = *Upload(*store_, SpecFor("t", "kept", kept), kept);
  store_.reset();
  // A crash mid-commit: a PENDING record, its blobs and a partial version dir;
  // an upload in progress; a temp blob; the READY version's dir lost.
  {
    auto reg = *SqliteRegistry::Open(tmp_ / "data/registry.db");
    AdapterRecord pending;
    pending.owner = "t";
    pending.name = "half";
    pending.method = "lora";
    pending.files = {{"adapter_config.json", Sha256::Hex("orphan"), 6}};
    ASSERT_TRUE(reg->InsertPending(pending, "feedfacefeedfacefeedfacefeedface").ok());
  }
  std::ofstream(tmp_ / ("data/blobs/" + Sha256::Hex("orphan")), std::ios::binary) << "orphan";
  std::ofstream(tmp_ / "data/blobs/0123.tmp") << "partial";
  WriteFiles(tmp_ / "data/adapters/feedfacefeedfacefeedfacefeedface/1.tmp", {{"x", "y"}});
  WriteFiles(tmp_ / "data/uploads/abc", {{"adapter_config.json", "{"}});
  std::filesystem::remove_all(tmp_ / ("data/adapters/" + rec.adapter_id));

  Reopen();
  EXPECT_EQ(report_.pending_removed, 1);
  EXPECT_EQ(report_.uploads_removed, 1);
  EXPECT_EQ(report_.dirs_rebuilt, 1);
  EXPECT_EQ(report_.blobs_removed, 1);
  EXPECT_TRUE(report_.damaged.empty());
  EXPECT_TRUE(FilesUnder(tmp_ / "data/uploads").empty());
  EXPECT_FALSE(std::filesystem::exists(tmp_ / "data/adapters/feedfacefeedfacefeedfacefeedface"));
  EXPECT_EQ(FilesUnder(tmp_ / "data/blobs").size(), 2u);
  EXPECT_EQ(store_->Get("t", "half").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<ResolvedAdapter> r = store_->Resolve("t", "kept");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Slurp(r->dir + "/adapter_model.safetensors"), kept.at("adapter_model.safetensors"));
}

TEST_F(AdapterStoreTest, OpenReportsAReadyVersionWhoseBlobRotted) {
  const Files files = LoraFiles(1);
  AdapterRecord rec = *Upload(*store_, SpecFor("t", "a", files), files);
  store_.reset();
  const std::string blob = tmp_ / ("data/blobs/" + rec.files[1].sha256);
  ::chmod(blob.c_str(), 0644);
  {
    std::fstream f(blob, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x7f');
  }
  StoreOptions options = OptionsAt(tmp_ / "data");
  options.verify_on_open = true;
  Reopen(options);
  ASSERT_EQ(report_.damaged.size(), 1u);
  EXPECT_NE(report_.damaged[0].find("a@1"), std::string::npos);
  EXPECT_EQ(store_->VerifyFiles(*store_->Get("t", "a")).code(), absl::StatusCode::kDataLoss);
}

TEST_F(AdapterStoreTest, ConcurrentUploadsOfOneNameGetDistinctVersions) {
  constexpr int kThreads = 8;
  std::vector<std::thread> threads;
  std::vector<absl::StatusOr<AdapterRecord>> results(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      const Files files = LoraFiles(100 + i);
      results[i] = Upload(*store_, SpecFor("t", "a", files), files, 64);
    });
  }
  for (auto& t : threads) t.join();
  std::set<int64_t> versions;
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    versions.insert(r->version);
  }
  EXPECT_EQ(versions.size(), static_cast<size_t>(kThreads));
  EXPECT_EQ(*versions.rbegin(), kThreads);
  EXPECT_EQ(store_->List({.owner = "t"})->records.size(), static_cast<size_t>(kThreads));
}

}  // namespace
}  // namespace adapterd

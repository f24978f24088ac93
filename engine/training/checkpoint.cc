#include "engine/training/checkpoint.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/training/optim.h"
#include "nlohmann/json.hpp"

namespace adapterd {
namespace {

using Json = nlohmann::json;

constexpr char kCheckpointDir[] = "/checkpoint";
constexpr char kStateFile[] = "/state.safetensors";
constexpr char kStateJson[] = "/state.json";

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<CheckpointState> LoadFrom(const std::string& dir, AdamW& optimizer) {
  ASSIGN_OR_RETURN(std::string text, ReadText(dir + kStateJson));
  const Json root = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!root.is_object() || root.value("format", 0) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("corrupt checkpoint ", dir, kStateJson));
  }
  CheckpointState state;
  try {
    state.method = root.at("method").get<std::string>();
    state.step = root.at("step").get<int64_t>();
    state.epoch = root.at("epoch").get<int>();
    state.position = root.at("position").get<int64_t>();
    state.seed = root.at("seed").get<uint64_t>();
    state.tokens_seen = root.at("tokens_seen").get<int64_t>();
    std::vector<std::string> names = root.at("parameters").get<std::vector<std::string>>();
    const auto& params = optimizer.params();
    bool same = names.size() == params.size();
    for (size_t i = 0; same && i < names.size(); ++i) same = names[i] == params[i].name;
    if (!same) {
      return absl::FailedPreconditionError(
          absl::StrCat("the checkpoint in ", dir, " has other parameters than this job"));
    }
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("corrupt checkpoint ", dir, kStateJson, ": ", e.what()));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(dir + kStateFile));
  c10::NoGradGuard no_grad;
  const auto& params = optimizer.params();
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i].tensor;
    const std::vector<int64_t> shape(p.sizes().begin(), p.sizes().end());
    ASSIGN_OR_RETURN(at::Tensor value, ReadF32(*file, "param/" + params[i].name, shape));
    ASSIGN_OR_RETURN(at::Tensor m, ReadF32(*file, "exp_avg/" + params[i].name, shape));
    ASSIGN_OR_RETURN(at::Tensor v, ReadF32(*file, "exp_avg_sq/" + params[i].name, shape));
    const_cast<at::Tensor&>(p).copy_(value);
    optimizer.exp_avg()[i].copy_(m);
    optimizer.exp_avg_sq()[i].copy_(v);
  }
  optimizer.set_steps(state.step);
  return state;
}

}  // namespace

SafetensorsTensor ToSafetensorsF32(const std::string& name, const at::Tensor& tensor) {
  at::Tensor t = tensor.detach().to(at::kCPU, at::kFloat).contiguous();
  SafetensorsTensor out;
  out.name = name;
  out.dtype = "F32";
  out.shape.assign(t.sizes().begin(), t.sizes().end());
  out.data.assign(static_cast<const char*>(t.data_ptr()), t.numel() * sizeof(float));
  return out;
}

absl::StatusOr<at::Tensor> ReadF32(const SafetensorsFile& file, const std::string& name,
                                   const std::vector<int64_t>& shape) {
  const SafetensorsTensorInfo* info = file.Find(name);
  if (info == nullptr || info->dtype != "F32" || info->shape != shape) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": no F32 tensor '", name, "' of the expected shape"));
  }
  at::Tensor t = at::empty(shape, at::kFloat);
  const std::string_view data = file.Data(*info);
  std::memcpy(t.data_ptr(), data.data(), data.size());
  return t;
}

absl::Status WriteFileSynced(const std::string& path, const std::string& contents) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", path);
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const absl::Status s = Errno("cannot write", path);
      ::close(fd);
      return s;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const absl::Status s = Errno("cannot fsync", path);
    ::close(fd);
    return s;
  }
  if (::close(fd) != 0) return Errno("cannot close", path);
  return absl::OkStatus();
}

absl::Status SyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Errno("cannot fsync", dir);
  return absl::OkStatus();
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

absl::Status RemoveTree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    return errno == ENOENT ? absl::OkStatus() : Errno("cannot stat", path);
  }
  if (S_ISDIR(st.st_mode)) {
    DIR* d = ::opendir(path.c_str());
    if (d == nullptr) return Errno("cannot open", path);
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    ::closedir(d);
    for (const std::string& n : names) RETURN_IF_ERROR(RemoveTree(path + "/" + n));
    if (::rmdir(path.c_str()) != 0) return Errno("cannot remove", path);
  } else if (::unlink(path.c_str()) != 0) {
    return Errno("cannot remove", path);
  }
  return absl::OkStatus();
}

absl::Status CopyFlatDir(const std::string& from, const std::string& to) {
  DIR* d = ::opendir(from.c_str());
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("cannot open directory ", from));
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    struct stat st;
    if (n != "." && n != ".." && ::stat((from + "/" + n).c_str(), &st) == 0 &&
        S_ISREG(st.st_mode)) {
      names.push_back(n);
    }
  }
  ::closedir(d);
  if (::mkdir(to.c_str(), 0755) != 0) return Errno("cannot create", to);
  for (const std::string& n : names) {
    ASSIGN_OR_RETURN(std::string bytes, ReadText(from + "/" + n));
    RETURN_IF_ERROR(WriteFileSynced(to + "/" + n, bytes));
  }
  return SyncDir(to);
}

absl::Status SaveCheckpoint(const std::string& work_dir, AdamW& optimizer,
                            const CheckpointState& state) {
  const std::string final_dir = work_dir + kCheckpointDir;
  const std::string tmp = final_dir + ".tmp";
  const std::string old = final_dir + ".old";
  RETURN_IF_ERROR(RemoveTree(tmp));
  if (::mkdir(tmp.c_str(), 0755) != 0) return Errno("cannot create", tmp);
  std::vector<SafetensorsTensor> tensors;
  Json names = Json::array();
  const auto& params = optimizer.params();
  for (size_t i = 0; i < params.size(); ++i) {
    tensors.push_back(ToSafetensorsF32("param/" + params[i].name, params[i].tensor));
    tensors.push_back(ToSafetensorsF32("exp_avg/" + params[i].name, optimizer.exp_avg()[i]));
    tensors.push_back(ToSafetensorsF32("exp_avg_sq/" + params[i].name, optimizer.exp_avg_sq()[i]));
    names.push_back(params[i].name);
  }
  ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(tensors));
  RETURN_IF_ERROR(WriteFileSynced(tmp + kStateFile, bytes));
  Json root = {{"format", 1},
               {"method", state.method},
               {"step", state.step},
               {"epoch", state.epoch},
               {"position", state.position},
               {"seed", state.seed},
               {"tokens_seen", state.tokens_seen},
               {"parameters", names}};
  RETURN_IF_ERROR(WriteFileSynced(tmp + kStateJson, root.dump(2)));
  RETURN_IF_ERROR(SyncDir(tmp));
  RETURN_IF_ERROR(RemoveTree(old));
  if (IsDirectory(final_dir) && ::rename(final_dir.c_str(), old.c_str()) != 0) {
    return Errno("cannot rename", final_dir);
  }
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0) return Errno("cannot rename", tmp);
  RETURN_IF_ERROR(SyncDir(work_dir));
  return RemoveTree(old);
}

bool HasCheckpoint(const std::string& work_dir) {
  return IsDirectory(work_dir + kCheckpointDir) ||
         IsDirectory(work_dir + kCheckpointDir + std::string(".old"));
}

absl::Status RemoveCheckpoint(const std::string& work_dir) {
  const std::string dir = work_dir + kCheckpointDir;
  RETURN_IF_ERROR(RemoveTree(dir + ".tmp"));
  RETURN_IF_ERROR(RemoveTree(dir + ".old"));
  return RemoveTree(dir);
}

absl::StatusOr<CheckpointState> LoadCheckpoint(const std::string& work_dir, AdamW& optimizer) {
  std::string dir = work_dir + kCheckpointDir;
  if (!IsDirectory(dir)) dir += ".old";
  return LoadFrom(dir, optimizer);
}

}  // namespace adapterd

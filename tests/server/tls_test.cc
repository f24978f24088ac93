// TLS and mutual TLS end to end, with certificates made in the test by the
// openssl CLI: a CA, a server certificate for 127.0.0.1, a client
// certificate from the CA, and a second CA that nothing trusts.

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "client/client.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/server/fake_engine.h"
#include "tests/store/store_test_util.h"

namespace adapterd::testing {
namespace {

class Certs {
 public:
  Certs() {
    const std::string d = tmp_.path();
    ok_ = Run("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca "
              "-keyout " +
              d + "/ca.key -out " + d + "/ca.pem") &&
          Run("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca "
              "-keyout " +
              d + "/other.key -out " + d + "/other.pem") &&
          Issue("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost") &&
          Issue("client", "ca", "extendedKeyUsage=clientAuth") &&
          Issue("stranger", "other", "extendedKeyUsage=clientAuth");
  }
  bool ok() const { return ok_; }
  std::string operator/(const std::string& f) const { return tmp_ / f; }

 private:
  static bool Run(const std::string& cmd) {
    return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0;
  }
  bool Issue(const std::string& name, const std::string& ca, const std::string& ext) {
    const std::string d = tmp_.path();
    std::ofstream(d + "/" + name + ".ext") << ext << "\n";
    return Run("openssl req -newkey rsa:2048 -nodes -subj /CN=" + name + " -keyout " + d + "/" +
               name + ".key -out " + d + "/" + name + ".csr") &&
           Run("openssl x509 -req -days 2 -in " + d + "/" + name + ".csr -CA " + d + "/" + ca +
               ".pem -CAkey " + d + "/" + ca + ".key -CAcreateserial -extfile " + d + "/" + name +
               ".ext -out " + d + "/" + name + ".pem");
  }

  TempDir tmp_;
  bool ok_ = false;
};

struct TlsServer {
  TlsServer(const Certs& certs, bool mutual) {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.tls_cert_file = certs / "server.pem";
    options.tls_key_file = certs / "server.key";
    if (mutual) options.tls_client_ca_file = certs / "ca.pem";
    absl::StatusOr<std::unique_ptr<Server>> started = Server::Start(options, &engine);
    EXPECT_TRUE(started.ok()) << started.status();
    server = *std::move(started);
  }
  ~TlsServer() {
    server->BeginShutdown();
    engine.Shutdown(absl::ZeroDuration());
    server->Shutdown(absl::Seconds(2));
  }

  grpc::StatusCode Call(ClientOptions o) {
    o.target = server->address();
    o.timeout = std::chrono::milliseconds(3000);
    Client client(o);
    v1::ServerInfo info;
    return client.GetServerInfo(&info).error_code();
  }

  FakeEngine engine;
  std::unique_ptr<Server> server;
};

TEST(TlsTest, ServerTlsAcceptsVerifyingClientsAndRefusesPlaintextAndWrongCa) {
  Certs certs;
  ASSERT_TRUE(certs.ok()) << "openssl could not make the test certificates";
  TlsServer s(certs, /*mutual=*/false);
  ClientOptions verified;
  verified.tls_ca_file = certs / "ca.pem";
  EXPECT_EQ(s.Call(verified), grpc::StatusCode::OK);
  EXPECT_EQ(s.Call(ClientOptions()), grpc::StatusCode::UNAVAILABLE);  // Plaintext.
  ClientOptions wrong_ca;
  wrong_ca.tls_ca_file = certs / "other.pem";
  EXPECT_EQ(s.Call(wrong_ca), grpc::StatusCode::UNAVAILABLE);
  ClientOptions unreadable;
  unreadable.tls_ca_file = certs / "missing.pem";
  EXPECT_EQ(s.Call(unreadable), grpc::StatusCode::UNAVAILABLE);
}

TEST(TlsTest, MutualTlsNeedsAClientCertificateFromTheConfiguredCa) {
  Certs certs;
  ASSERT_TRUE(certs.ok()) << "openssl could not make the test certificates";
  TlsServer s(certs, /*mutual=*/true);
  ClientOptions with_cert;
  with_cert.tls_ca_file = certs / "ca.pem";
  with_cert.tls_cert_file = certs / "client.pem";
  with_cert.tls_key_file = certs / "client.key";
  EXPECT_EQ(s.Call(with_cert), grpc::StatusCode::OK);
  ClientOptions no_cert;
  no_cert.tls_ca_file = certs / "ca.pem";
  EXPECT_EQ(s.Call(no_cert), grpc::StatusCode::UNAVAILABLE);
  ClientOptions stranger = with_cert;
  stranger.tls_cert_file = certs / "stranger.pem";
  stranger.tls_key_file = certs / "stranger.key";
  EXPECT_EQ(s.Call(stranger), grpc::StatusCode::UNAVAILABLE);
  // A client certificate whose signature bytes were altered.
  std::ifstream in(certs / "client.pem");
  std::stringstream pem;
  pem << in.rdbuf();
  std::string mutated = pem.str();
  const size_t end = mutated.find("-----END");
  ASSERT_NE(end, std::string::npos);
  char& c = mutated[end - 10];
  c = c == 'A' ? 'B' : 'A';
  std::ofstream(certs / "mutated.pem") << mutated;
  ClientOptions tampered = with_cert;
  tampered.tls_cert_file = certs / "mutated.pem";
  EXPECT_EQ(s.Call(tampered), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(s.Call(ClientOptions()), grpc::StatusCode::UNAVAILABLE);  // Plaintext.
}

TEST(TlsTest, BadTlsConfigurationFailsStart) {
  Certs certs;
  ASSERT_TRUE(certs.ok());
  FakeEngine engine;
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.tls_cert_file = certs / "server.pem";  // No key.
  EXPECT_EQ(Server::Start(options, &engine).status().code(), absl::StatusCode::kInvalidArgument);
  options.tls_key_file = certs / "server.ext";  // Not PEM.
  EXPECT_EQ(Server::Start(options, &engine).status().code(), absl::StatusCode::kInvalidArgument);
  ServerOptions ca_only;
  ca_only.listen = "127.0.0.1:0";
  ca_only.tls_client_ca_file = certs / "ca.pem";
  EXPECT_EQ(Server::Start(ca_only, &engine).status().code(), absl::StatusCode::kInvalidArgument);
  engine.Shutdown(absl::ZeroDuration());
}

}  // namespace
}  // namespace adapterd::testing

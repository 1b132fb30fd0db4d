// The end of a log-in through the OpenID Connect provider: the server has exchanged the
// code and checked the access token; keep it where a pasted token is kept and go on.
// location.replace: the callback URL (its code) does not stay in the history.

const main = document.getElementById("main");
const token = main.dataset.token;
if (token) sessionStorage.setItem("dicomhub.token", token);
main.removeAttribute("data-token");
window.location.replace("/");

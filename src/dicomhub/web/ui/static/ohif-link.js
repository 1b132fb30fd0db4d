// The study page's "Open in OHIF" link, shown only when the server has the OHIF viewer
// installed (`dicomhub ohif install`): then its configuration script is there, otherwise
// /ohif answers a page saying how to install it. The viewer opens in this tab, where
// sessionStorage holds the token that OHIF's configuration sends to DICOMweb.

const holder = document.getElementById("ohif");
const study = document.getElementById("main").dataset.study;

if (holder && study) {
  fetch("/ohif/app-config.js", { method: "HEAD", cache: "no-store" })
    .then((response) => {
      if (!response.ok) return;
      const link = document.getElementById("ohif-link");
      link.href = `/ohif/viewer?StudyInstanceUIDs=${encodeURIComponent(study)}`;
      holder.hidden = false;
    })
    .catch(() => {
      // No viewer reachable: the page simply has no OHIF link.
    });
}

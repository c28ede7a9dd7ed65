// CodeSystems of the input contract (input-contract.md; mappings/concepts.yaml, mappings/cart-products.yaml).

CodeSystem: CartObservation
Id: cart-observation
Title: "CAR-T observation codes"
Description: "Observation codes for assessments that have no standard code (input-contract.md, Neurological assessments; oxygen delivery device)."
* insert ProjectCodeSystem
* #oxygen-delivery-device "Oxygen delivery device"
* #ice-score "ICE score (0-10)"
* #ice-orientation "ICE orientation (0-4)"
* #ice-naming "ICE naming (0-3)"
* #ice-commands "ICE following commands (0-1)"
* #ice-writing "ICE writing (0-1)"
* #ice-attention "ICE attention (0-1)"
* #capd-score "CAPD score (0-32)"
* #consciousness-level "Level of consciousness"
* #seizure "Seizure"
* #motor-finding "Motor finding"
* #cerebral-edema-finding "Cerebral edema finding"
* #cannot-perform-ice "ICE cannot be performed (patient unarousable)"

CodeSystem: OxygenDelivery
Id: oxygen-delivery
Title: "Oxygen delivery"
Description: "Oxygen delivery devices (input-contract.md, Vital signs and respiratory support)."
* insert ProjectCodeSystem
* #room-air "Room air"
* #blow-by "Blow-by"
* #nasal-cannula "Nasal cannula"
* #high-flow-nasal-cannula "High-flow nasal cannula"
* #simple-face-mask "Simple face mask"
* #non-rebreather-mask "Non-rebreather mask"
* #venturi-mask "Venturi mask"
* #cpap "CPAP"
* #bipap "BiPAP"
* #mechanical-ventilation "Mechanical ventilation"

CodeSystem: ConsciousnessLevel
Id: consciousness-level
Title: "Level of consciousness (ASTCT)"
Description: "ASTCT ICANS levels of consciousness (input-contract.md; Lee et al. 2019)."
* insert ProjectCodeSystem
* #alert "Alert"
* #awakens-spontaneously "Awakens spontaneously"
* #awakens-to-voice "Awakens to voice"
* #awakens-to-tactile "Awakens only to tactile stimulus"
* #unarousable "Unarousable"

CodeSystem: SeizureType
Id: seizure-type
Title: "Seizure type (ASTCT)"
Description: "Seizure findings of the ASTCT ICANS grading (input-contract.md)."
* insert ProjectCodeSystem
* #none "No seizure"
* #clinical-resolved-rapidly "Focal or generalized seizure that resolves rapidly, or nonconvulsive seizure on EEG that resolves with intervention"
* #nonconvulsive-eeg-resolved "Nonconvulsive seizure on EEG that resolves with intervention"
* #prolonged "Prolonged seizure (> 5 min)"
* #repetitive-without-recovery "Repetitive seizures without return to baseline in between"

CodeSystem: MotorFinding
Id: motor-finding
Title: "Motor finding (ASTCT)"
Description: "Motor findings of the ASTCT ICANS grading (input-contract.md)."
* insert ProjectCodeSystem
* #none "No motor finding"
* #deep-focal-weakness "Deep focal motor weakness (hemiparesis, paraparesis)"

CodeSystem: CerebralEdemaFinding
Id: cerebral-edema-finding
Title: "Cerebral edema finding (ASTCT)"
Description: "Raised intracranial pressure / cerebral edema findings of the ASTCT ICANS grading (input-contract.md)."
* insert ProjectCodeSystem
* #none "No cerebral edema"
* #focal "Focal or local edema on neuroimaging"
* #diffuse "Diffuse cerebral edema on neuroimaging"
* #posturing "Decerebrate or decorticate posturing"
* #cranial-nerve-vi-palsy "Cranial nerve VI palsy"
* #papilledema "Papilledema"
* #cushings-triad "Cushing's triad"

CodeSystem: CartProduct
Id: cart-product
Title: "CAR-T product"
Description: "Marks a MedicationAdministration or Procedure as the CAR-T cell infusion (day 0; input-contract.md)."
* insert ProjectCodeSystem
* #car-t-cell-product "CAR-T cell product"
